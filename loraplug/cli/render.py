"""How the CLI shows things: plugin tables, recipe summaries, run results."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape as _escape
from rich.table import Table

from loraplug.bundles import Sample
from loraplug.plugins import PluginHost
from loraplug.recipe import Recipe
from loraplug.recipe.sections import TrainSection


def escape(text: str) -> str:
    return _escape(text)


def plugin_table(console: Console, host: PluginHost) -> None:
    table = Table(title="loraplug plugins", title_justify="left")
    table.add_column("distribution")
    table.add_column("version")
    table.add_column("kinds served")
    table.add_column("hooks")
    table.add_column("status")
    conflicts = host.registry.conflicts()
    for record in host.records:
        kinds = "\n".join(f"{k.stage}: {k.name}" + (f" ({', '.join(k.models)})" if k.models else "") for k in record.kinds)
        hooks = ", ".join(h.removeprefix("loraplug_") for h in record.hooks if h != "loraplug_register_kinds")
        if record.status == "error":
            status = f"[red]error[/]: {escape(record.error or '')}"
        else:
            clashes = [
                f"{a.spec.stage}:{a.spec.name} also served by {b.distribution if a.distribution == record.distribution else a.distribution}"
                for a, b in conflicts
                if record.distribution in (a.distribution, b.distribution)
            ]
            status = "[green]ok[/]" if not clashes else "[yellow]conflict[/]: " + escape("; ".join(clashes))
        table.add_row(escape(record.distribution), record.version, escape(kinds), escape(hooks), status)
    if not host.records:
        console.print("No plugins installed. First-party ones: pip install -e plugins/causal-lm (see README.md).")
        return
    console.print(table)


def recipe_ok(console: Console, recipe: Recipe) -> None:
    exports = ", ".join(e.name for e in recipe.exports) or "none"
    console.print(
        f"[green]ok[/] {escape(str(recipe.path))}: data {recipe.data.kind} ({recipe.data.served.distribution}), "
        f"model {recipe.model.kind} ({recipe.model.served.distribution}), adapter {recipe.adapter.kind}, "
        f"exports {escape(exports)}"
    )


def run_header(console: Console, recipe: Recipe, *, smoke: bool) -> None:
    train = recipe.train
    length = f"{train.max_steps} steps" if train.max_steps else f"{train.epochs or 1:g} epoch(s)"
    console.print(
        f"[bold]loraplug run[/] {escape(recipe.run.name)}{' [yellow](smoke)[/]' if smoke else ''}: "
        f"{recipe.model.kind} {escape(str(getattr(recipe.model.options, 'pretrained', '')))} + {recipe.adapter.kind}, "
        f"{length}, batch {_batch(train)}, lr {train.lr:g}, "
        f"precision {train.mixed_precision}"
    )


def _batch(train: TrainSection) -> str:
    if train.batch_size == "auto":
        return f"auto (effective {train.auto_target})"
    return f"{train.batch_size}×{train.grad_accum_steps} accumulation"


def samples(console: Console, items: list[Sample]) -> None:
    for sample in items:
        result = sample.text if sample.text is not None else str(sample.image_path)
        console.print(f"[bold]{escape(sample.prompt)}[/]\n{escape(result or '')}\n")


def _short(text: str | None, limit: int = 160) -> str:
    text = (text or "").replace("\n", " ⏎ ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def run_summary(console: Console, outcome: object) -> None:
    from loraplug.pipeline import RunOutcome

    assert isinstance(outcome, RunOutcome)  # noqa: S101
    val = outcome.val_losses
    losses = f"; validation loss {val[0][1]:.3f} → {val[-1][1]:.3f}" if len(val) >= 2 else ""
    console.print(
        f"\n[bold green]done[/] {outcome.steps} steps in {outcome.seconds:.1f} s "
        f"({outcome.tokens_per_second:,.0f} tokens/s){losses}"
    )
    console.print(f"  run      {escape(str(outcome.run_dir))}")
    console.print(f"  adapter  {escape(str(outcome.adapter_path))}")
    for export in outcome.exports:
        state = f"[dim]{escape(export.loads_with)}[/]" if export.ok else "[red]failed[/]"
        console.print(f"  export   {escape(str(export.path))}  {state}")
        for note in export.notes:
            console.print(f"           [dim]{escape(note)}[/]")
    for before, after in zip(outcome.before, outcome.after, strict=False):
        if before.text is None:
            console.print(f"  samples  {escape(str(before.image_path))} → {escape(str(after.image_path))}")
            continue
        console.print(f"\n  [bold]prompt[/]  {escape(_short(before.prompt))}")
        console.print(f"  [bold]before[/]  {escape(_short(before.text))}")
        console.print(f"  [bold]after[/]   {escape(_short(after.text))}")


def key_tables(console: Console, sections: Iterable[tuple[str, str, type[BaseModel]]]) -> None:
    from loraplug.recipe.reference import keys_of

    for heading, note, model in sections:
        table = Table(title=f"{heading}  [dim]{escape(note)}[/]", title_justify="left", show_lines=False)
        for column in ("key", "type", "default", "meaning"):
            table.add_column(column, overflow="fold")
        for key in keys_of(model):
            table.add_row(key.name, escape(key.type.replace("\\|", "|")), escape(key.default), escape(key.description))
        console.print(table)
