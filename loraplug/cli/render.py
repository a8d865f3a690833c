"""How the CLI shows things: plugin tables, recipe summaries, run results."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape as _escape
from rich.table import Table

from loraplug.bundles import Artifact, Sample
from loraplug.kinds import KindSpec, declarations
from loraplug.plugins import PluginHost
from loraplug.runinfo import RunInfo, human_size

if TYPE_CHECKING:  # pydantic models: not imported by `loraplug --help` or `plugins list`
    from pydantic import BaseModel

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
        kinds = "\n".join(kind_line(k) for k in record.kinds)
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
        console.print(
            "No plugins installed. First-party ones: pip install -e plugins/causal-lm (see README.md)."
        )
        return
    console.print(table)


def kind_line(spec: KindSpec) -> str:
    """``export: kohya (stable-diffusion; adapters lora, loha)``, ``data: webdataset (produces caption-image,
    chat; streams)``: a kind and everything it declares (:func:`loraplug.kinds.declarations`)."""
    parts = [", ".join(spec.models)] if spec.models else []
    parts += declarations(spec)
    return f"{spec.stage}: {spec.name}" + (f" ({'; '.join(parts)})" if parts else "")


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
        f"{length}, batch {_batch(train)}, {train.optimizer} lr {train.lr:g}, "
        f"precision {train.mixed_precision}"
    )


def _batch(train: TrainSection) -> str:
    if train.batch_size == "auto":
        return f"auto (effective {train.auto_target})"
    return f"{train.batch_size}×{train.grad_accum_steps} accumulation"


def samples(console: Console, items: list[Sample]) -> None:
    for sample in items:
        result = "\n".join(output_text(artifact) for artifact in sample.outputs())
        console.print(f"[bold]{escape(sample.prompt)}[/]\n{escape(result)}\n")


def output_text(artifact: Artifact) -> str:
    """One output of a sample as a line of the terminal: text as it is, a file by its path, a table by its size."""
    if artifact.type == "text":
        return str(artifact.value)
    if artifact.type == "table":
        return f"(a table of {len(artifact.value)} rows)"
    return shown(artifact.value)


def _short(text: str | None, limit: int = 160) -> str:
    text = (text or "").replace("\n", " ⏎ ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(path: Path | str | None) -> str:
    """``path`` as the user would type it: relative to the working directory when inside it."""
    if path is None:
        return ""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def run_summary(console: Console, outcome: object) -> None:
    from loraplug.run import RunOutcome

    assert isinstance(outcome, RunOutcome)  # noqa: S101
    val = outcome.val_losses
    losses = f"; validation loss {val[0][1]:.3f} → {val[-1][1]:.3f}" if len(val) >= 2 else ""
    console.print(
        f"\n[bold green]done[/] {outcome.steps} steps in {outcome.seconds:.1f} s "
        f"({outcome.tokens_per_second:,.{1 if outcome.tokens_per_second < 10 else 0}f} {outcome.unit}/s){losses}"
    )
    console.print(f"  run      {escape(shown(outcome.run_dir))}")
    console.print(f"  adapter  {escape(shown(outcome.adapter_path))}")
    for export in outcome.exports:
        state = f"[dim]{escape(export.loads_with)}[/]" if export.ok else "[red]failed[/]"
        console.print(f"  export   {escape(shown(export.path))}  {state}")
        for note in export.notes:
            console.print(f"           [dim]{escape(note)}[/]")
    for before, after in zip(outcome.before, outcome.after, strict=False):
        if before.text is None:  # images, audio, tables: where they are
            first = [output_text(s.outputs()[0]) if s.outputs() else "" for s in (before, after)]
            console.print(f"  samples  {escape(first[0])} → {escape(first[1])}")
            continue
        console.print(f"\n  [bold]prompt[/]  {escape(_short(before.prompt))}")
        console.print(f"  [bold]before[/]  {escape(_short(before.text))}")
        console.print(f"  [bold]after[/]   {escape(_short(after.text))}")


def key_tables(
    console: Console,
    sections: Iterable[tuple[str, str, type[BaseModel]]],
    metrics: list[tuple[str, str, str, str, str]],
    optimizers: Sequence[tuple[str, str, str, str]] = (),
) -> None:
    from loraplug.recipe.reference import keys_of

    for heading, note, model in sections:
        # escape: "[train]" is a section name here, not rich markup
        table = Table(
            title=f"{escape(heading)}  [dim]{escape(note)}[/]", title_justify="left", show_lines=False
        )
        for column in ("key", "type", "default", "meaning"):
            table.add_column(column, overflow="fold")
        for key in keys_of(model):
            table.add_row(
                key.name, escape(key.type.replace("\\|", "|")), escape(key.default), escape(key.description)
            )
        console.print(table)
    console.print(
        "Every [[export]] also takes `name` (its directory under exports/; default: the kind).", markup=False
    )
    if optimizers:
        table = Table(
            title=f"train.optimizer  [dim]the optimizer kinds a recipe can name (options in {escape('[optimizer]')})[/]",
            title_justify="left",
        )
        for column in ("optimizer", "model kinds", "distribution", "meaning"):
            table.add_column(column, overflow="fold")
        for optimizer in optimizers:
            table.add_row(*(escape(cell) for cell in optimizer))
        console.print(table)
    table = Table(
        title="eval.metrics  [dim]names a recipe can list (val_loss is the core's own: lower is better)[/]",
        title_justify="left",
    )
    for column in ("metric", "model kinds", "better", "distribution", "meaning"):
        table.add_column(column, overflow="fold")
    for row in metrics:
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)


# --- runs: `loraplug runs list` and `loraplug runs show` -----------------------------------------

STATUS_STYLE = {
    "finished": "green",
    "failed": "red",
    "interrupted": "yellow",
    "running": "cyan",
    "damaged": "red",
    "unreadable": "red",
}


def status_text(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{escape(status)}[/]"


def run_steps(info: RunInfo) -> str:
    return f"{info.step}/{info.total_steps}" if info.total_steps else str(info.step)


def run_best(info: RunInfo) -> str:
    best = info.best()
    return f"{best.metric} {best.value:.4f} @ {best.step}" if best else ""


def run_when(info: RunInfo) -> str:
    """The start time as ``YYYY-MM-DD HH:MM``; run.json keeps it with its UTC offset."""
    return (info.recorded.started_at or "")[:16].replace("T", " ")


def run_table(console: Console, runs: list[RunInfo], root: Path) -> None:
    if not runs:
        console.print(f"No runs in {escape(shown(root))}. `loraplug run RECIPE` writes one under runs/.")
        return
    table = Table(title=f"runs in {escape(shown(root))}", title_justify="left")
    for column in ("run", "status", "steps", "best", "started"):
        table.add_column(column, justify="right" if column == "steps" else "left")
    for info in runs:
        name = (
            info.path.relative_to(root)
            if info.path.is_relative_to(root) and info.path != root
            else Path(info.path.name)
        )
        table.add_row(
            escape(str(name)),
            status_text(info.status),
            run_steps(info),
            escape(run_best(info)),
            run_when(info),
        )
    console.print(table)
    for info in runs:  # damaged and unreadable runs: why, under the table
        if info.problem:
            console.print(
                f"  {status_text(info.status)} {escape(shown(info.path))}: {escape(info.problem)}",
                highlight=False,
            )


def run_details(console: Console, info: RunInfo) -> None:
    """What ``runs show`` prints: status, data, final metrics; the exports follow in their own table."""
    console.print(
        f"[bold]{escape(info.name)}[/] {status_text(info.status)}  step {run_steps(info)}  started {run_when(info)}"
    )
    console.print(f"  run dir  {escape(shown(info.path))}")
    if info.recorded.error and info.status != "finished":
        console.print(f"  [red]error[/]    {escape(info.recorded.error)}")
    if info.problem:
        console.print(f"  [red]{escape(info.status)}[/]  {escape(info.problem)}")
    if info.data:
        console.print("  data     " + escape(", ".join(f"{k} {v}" for k, v in info.data.items())))
    final = info.final_metrics()
    if final:
        table = Table(title="final metrics", title_justify="left")
        for column in ("split", "metric", "value", "step"):
            table.add_column(column, justify="right" if column in ("value", "step") else "left")
        for (split, name), (step, value) in sorted(
            final.items(), key=lambda item: (item[0][0] != "train", item[0])
        ):
            table.add_row(split, escape(name), f"{value:.6g}", str(step))
        console.print(table)
    best = run_best(info)
    if best:
        console.print(f"  best     {escape(best)}")


def _figure(value: object) -> str | None:
    """A figure as table text; structured ones (shapes per input) stay in export.json."""
    if isinstance(value, bool | int | str):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return None


def _manifest_rows(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """One export's (key, value) rows: kind, where, files, figures, how it loads, notes."""
    rows = [("kind", escape(str(manifest.get("kind", ""))))]
    plugin = manifest.get("plugin")
    if isinstance(plugin, dict):
        rows.append(
            ("plugin", escape(f"{plugin.get('distribution', '?')} {plugin.get('version', '')}".strip()))
        )
    where = manifest.get("path") or manifest.get("dir")
    if where:
        rows.append(("path", escape(str(where))))
    files = sorted(
        (f for f in manifest.get("files") or [] if isinstance(f, dict)), key=lambda f: -int(f.get("size", 0))
    )
    total = sum(int(f.get("size", 0)) for f in files)
    rows.append(("size", f"{human_size(total)} in {len(files)} file{'s' if len(files) != 1 else ''}"))
    for entry in files[:MANIFEST_FILES_SHOWN]:
        digest = str(entry.get("sha256", ""))[:12]
        rows.append(
            (
                "",
                f"{escape(str(entry.get('path')))}  {human_size(int(entry.get('size', 0)))}  [dim]sha256 {digest}…[/]",
            )
        )
    if len(files) > MANIFEST_FILES_SHOWN:
        rows.append(("", f"[dim]+ {len(files) - MANIFEST_FILES_SHOWN} more (export.json lists them)[/]"))
    figures = manifest.get("figures")
    for key, value in figures.items() if isinstance(figures, dict) else []:
        shown = _figure(value)
        if shown is not None:
            rows.append((escape(str(key)), escape(shown)))
    if manifest.get("loads_with"):
        rows.append(("loads with", escape(str(manifest["loads_with"]))))
    for note in manifest.get("notes") or []:
        rows.append(("note", f"[dim]{escape(str(note))}[/]"))
    return rows


#: Files listed per export, largest first; export.json lists every one.
MANIFEST_FILES_SHOWN = 3


def export_manifest_table(console: Console, manifests: list[dict[str, Any]]) -> None:
    """Exports as one table, a section per export: kind, files (size, sha256), figures, how it loads.

    Each manifest is an ``export.json`` as a dict, optionally with ``"path"`` (its directory). Keys a
    manifest lacks (older or third-party ones) are left out rather than failing. Rows are key/value
    pairs, so a figure name is never broken across lines in an 80-column terminal.
    """
    table = Table(title="exports", title_justify="left")
    table.add_column("export", no_wrap=True)
    table.add_column("", no_wrap=True)
    table.add_column("", overflow="fold")
    for index, manifest in enumerate(manifests):
        if index:
            table.add_section()
        for row, (key, value) in enumerate(_manifest_rows(manifest)):
            name = f"[bold]{escape(str(manifest.get('name', '?')))}[/]" if row == 0 else ""
            table.add_row(name, key, value)
    console.print(table)
