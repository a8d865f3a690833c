"""``loraplug export RUN_DIR --kind KIND``: export a finished run, or one of its checkpoints, again.

The run's recipe rebuilds the base model and adapter, the trained weights are loaded, and the same
export plugin a recipe's ``[[export]]`` would use writes ``exports/<name>/`` with its ``export.json``
— nothing is retrained. A failed export changes nothing else in the run directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from loraplug.errors import LoraplugError
from loraplug.rundir import ADAPTER_DIR, ADAPTER_FILE, EXPORTS_DIR, RECIPE_FILE
from loraplug.runinfo import damaged_weights_error, safetensors_problem
from loraplug.safety import confine, may_replace
from loraplug.status import RunStatus

if TYPE_CHECKING:
    from loraplug.pipeline import ExportOutcome


@dataclass(frozen=True)
class WeightsSource:
    """Which trained weights to export: the run's final adapter or a checkpoint's."""

    run_dir: Path
    adapter: Path
    checkpoint: str | None = None


def locate_weights(path: Path) -> WeightsSource:
    """``path`` as a run directory, or as a checkpoint directory inside one."""
    path = path.absolute()
    if not path.is_dir():
        raise LoraplugError(
            f"{path} does not exist or is not a directory", fix="Pass a run directory, e.g. runs/quickstart"
        )
    if (path / RECIPE_FILE).exists():
        adapter = path / ADAPTER_DIR / ADAPTER_FILE
        if not adapter.exists():
            raise LoraplugError(
                f"The run {path} has no trained adapter yet ({ADAPTER_DIR}/{ADAPTER_FILE} is missing)",
                fix="Export it once the run has finished, or pass one of its checkpoint directories",
            )
        _check_whole(adapter)
        return WeightsSource(path, adapter)
    candidates = [path / ADAPTER_FILE, path / ADAPTER_DIR / ADAPTER_FILE]
    checkpoint_adapter = next((c for c in candidates if c.exists()), None)
    run_dir = next((p for p in (path.parent, path.parent.parent) if (p / RECIPE_FILE).exists()), None)
    if checkpoint_adapter is None or run_dir is None:
        raise LoraplugError(
            f"{path} is not a loraplug run directory (no {RECIPE_FILE}) nor a checkpoint of one (no {ADAPTER_FILE})",
            fix="Pass the directory `loraplug run` printed, e.g. runs/quickstart, or runs/quickstart/checkpoints/step-00000200",
        )
    _check_whole(checkpoint_adapter)
    return WeightsSource(run_dir, checkpoint_adapter, checkpoint=path.name)


def _check_whole(adapter: Path) -> None:
    """Refuse weights cut short before the base model loads (seconds to minutes), naming the file."""
    problem = safetensors_problem(adapter)
    if problem:
        raise damaged_weights_error(adapter, problem)


def _record_in_status(run_dir: Path, outcome: ExportOutcome) -> None:
    """Keep ``run.json``'s list of exports current, so run listings show re-exports too."""
    status = RunStatus.load(run_dir)
    if status is None:
        return
    status.with_export(outcome.name, outcome.kind, ok=outcome.ok, error=outcome.error).save(run_dir)


@click.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("settings", nargs=-1)
@click.option(
    "--kind", required=True, help="The export kind, as in [[export]]: peft, merged, onnx, bnb-4bit, …"
)
@click.option(
    "--name", help="Directory under exports/ (default: the kind; for a checkpoint, <checkpoint>-<kind>)."
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace exports/NAME; the old one is kept until the new one is complete.",
)
def export(run_dir: Path, settings: tuple[str, ...], kind: str, name: str | None, overwrite: bool) -> None:
    """Export a finished run (or a checkpoint directory of one) again, without retraining.

    SETTINGS are the export's options as KEY=VALUE, checked like the keys of an [[export]] table:

    \b
    loraplug export runs/quickstart --kind onnx tolerance=1e-3
    loraplug export runs/quickstart --kind bnb-4bit quant_type=fp4 --name bnb-fp4
    """
    from loraplug.cli.render import export_manifest_table
    from loraplug.cli.shared import console, host, warn_broken_plugins
    from loraplug.optional import keep_out_unused
    from loraplug.pipeline import load_run, run_export
    from loraplug.recipe import load_recipe
    from loraplug.recipe.validate import export_section

    warn_broken_plugins()
    plugins = host()
    source = locate_weights(run_dir)
    recipe = load_recipe(source.run_dir / RECIPE_FILE, plugins, check_files=False)
    default_name = kind if source.checkpoint is None else f"{source.checkpoint}-{kind}"
    section = export_section(
        plugins,
        kind,
        settings,
        name=name or default_name,
        model_kind=recipe.model.kind,
        adapter_kind=recipe.adapter.kind,
    )
    # Resolved inside exports/ as run_export resolves it: a symlink there cannot lead the export elsewhere.
    target = confine(source.run_dir / EXPORTS_DIR, section.name, key="--name")
    # Only an earlier export (its export.json) is replaced, and only with --overwrite (loraplug.safety).
    may_replace(
        target,
        holds="an export" if (target / "export.json").is_file() else None,
        overwrite=overwrite,
        key="The export directory",
        ours="a loraplug export (it has no export.json)",
        replacing="the old export is kept until the new one is complete",
        elsewhere="pass --name to write beside it",
    )

    # A checkpoint's weights load as such; the finished run's own adapter keeps its final metrics (model cards).
    keep_out_unused(recipe, section)  # as `run` does; the export's own kind may need one of them
    recipe, ctx, model = load_run(
        source.run_dir,
        plugins,
        console,
        adapter_path=source.adapter if source.checkpoint else None,
        recipe=recipe,
    )
    # replace=True: what is there (nothing, an empty directory, or an export with --overwrite) was agreed to above.
    outcome = run_export(plugins, section, model, recipe, ctx, replace=True, adapter_path=source.adapter)
    _record_in_status(source.run_dir, outcome)
    if not outcome.ok:
        raise LoraplugError(
            f"The {kind} export of {source.run_dir} failed: {outcome.error}",
            fix="Nothing else was changed: the adapter and the run's other exports are as they were",
        )
    manifest = json.loads((outcome.path / "export.json").read_text(encoding="utf-8"))
    export_manifest_table(console, [{**manifest, "path": str(outcome.path)}])
