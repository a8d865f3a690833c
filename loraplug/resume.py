"""Deciding whether and from where a run can be resumed.

``loraplug run RECIPE --resume`` continues the run directory's newest whole checkpoint, and refuses
when the recipe changed in a way that changes what is trained — naming the keys — unless ``--force``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loraplug.errors import LoraplugError
from loraplug.plugins import PluginHost
from loraplug.recipe import Recipe, load_recipe
from loraplug.rundir import RECIPE_FILE, atomic_write_text
from loraplug.runinfo import RECORD_KEYS, read_metrics
from loraplug.status import FINISHED, RunStatus
from loraplug.training.checkpoint import MANIFEST, Checkpoints, engine_of


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def changed_keys(before: Recipe, after: Recipe) -> list[str]:
    """Dotted keys whose values differ between the parts of two recipes that determine training."""
    old, new = flatten(before.training_fingerprint()), flatten(after.training_fingerprint())
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def resume_point(
    run_dir: Path,
    recipe: Recipe,
    host: PluginHost,
    accelerator: Any,
    *,
    force: bool,
    warn: Callable[[str], None],
) -> Path:
    """The checkpoint to continue from, after every check a resume needs."""
    status = RunStatus.load(run_dir)
    if status is None:
        raise LoraplugError(
            f"There is no run to resume in {run_dir}",
            fix="Start it without --resume (check run.name and run.output_dir)",
        )
    if status.status == FINISHED and not force:
        raise LoraplugError(
            f"The run in {run_dir} already finished (step {status.step}); there is nothing to resume",
            fix="To train further, raise train.max_steps and pass --resume --force; to start over, --overwrite",
        )
    checkpoints = Checkpoints(run_dir, accelerator, keep_last=recipe.train.keep_last)
    checkpoint = checkpoints.newest(warn=warn)
    if checkpoint is None:
        raise no_checkpoint_error(run_dir, checkpoints, recipe.train.save_every_n_steps, status)
    stored = load_recipe(run_dir / RECIPE_FILE, host, check_files=False)
    changed = changed_keys(stored, recipe)
    main = accelerator.is_main_process
    resized = "train.batch_size" in changed and elastic(checkpoint, recipe, accelerator.num_processes)
    if resized:
        changed.remove("train.batch_size")
    if changed and not force:
        raise LoraplugError(
            f"The recipe changed since this run started: {', '.join(changed)}",
            where=str(run_dir / RECIPE_FILE),
            fix="Resume with the recipe it started with, or pass --resume --force to continue with the new one",
        )
    if changed and main:
        warn(f"resuming with a changed recipe (--force): {', '.join(changed)}")
    written, this = engine_of(json.loads((checkpoint / MANIFEST).read_text())), checkpoints.engine()
    if written != this and main:
        warn(
            f"{checkpoint.name} was written by a run {written}; this run is {this}: its state is read whole and split as this run holds it"
        )
    if (changed or resized) and main:  # the run directory keeps the recipe it now trains with
        atomic_write_text(run_dir / RECIPE_FILE, recipe.to_toml())
    return checkpoint


def elastic(checkpoint: Path, recipe: Recipe, processes: int) -> bool:
    """Whether this resume continues on another number of processes with the same global micro-batch
    (``train.batch_size`` × processes), which trains exactly the same samples: then a changed
    ``train.batch_size`` is not a changed recipe (the checkpoint's restore says what carries over)."""
    manifest = json.loads((checkpoint / MANIFEST).read_text())
    written, before = manifest.get("global_micro_batch"), manifest.get("processes", 1)
    batch = recipe.train.batch_size
    return (
        before != processes
        and written is not None
        and isinstance(batch, int)
        and batch * processes == written
    )


def no_checkpoint_error(
    run_dir: Path, checkpoints: Checkpoints, save_every: int | None, status: RunStatus
) -> LoraplugError:
    """Why there is nothing to resume from, as it is: every checkpoint damaged, none written yet, or none asked for."""
    problems = checkpoints.problems()
    if problems:
        listed = "; ".join(f"{path.name}: {problem}" for path, problem in problems)
        which = (
            "its only checkpoint is" if len(problems) == 1 else f"all {len(problems)} of its checkpoints are"
        )
        return LoraplugError(
            f"The run in {run_dir} has no whole checkpoint to resume from: {which} damaged ({listed})",
            where=str(checkpoints.root),
            fix="A checkpoint's files must match the checksums in its checkpoint.json; if they were copied, copy them "
            "again. Otherwise start the run over with --overwrite",
        )
    step = status.step
    if save_every:
        return LoraplugError(
            f"The run in {run_dir} stopped before its first checkpoint (train.save_every_n_steps = {save_every}; "
            f"its last recorded step is {step}), so there is nothing to resume from",
            fix="Start it over with --overwrite; a smaller train.save_every_n_steps loses less of a run that stops early",
        )
    return LoraplugError(
        f"The run in {run_dir} has no checkpoint to resume from: train.save_every_n_steps is not set, so it wrote none",
        fix="Start it over with --overwrite, and set train.save_every_n_steps so the next run can be resumed",
    )


def logged_evaluations(path: Path, *, up_to: int) -> list[tuple[int, dict[str, float]]]:
    """The evaluations ``metrics.jsonl`` holds up to step ``up_to``, the step-0 baseline first.

    A resumed run evaluates only from its checkpoint on; these are the ones before, so its summary and
    ``run.json`` cover the whole run.
    """
    return [
        (
            record["step"],
            {
                k: float(v)
                for k, v in record.items()
                if k not in RECORD_KEYS and isinstance(v, int | float) and not isinstance(v, bool)
            },
        )
        for record in read_metrics(path)
        if record.get("split") == "eval" and record["step"] <= up_to
    ]


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines a crashed run logged after the checkpoint it is resumed from, and a line torn by the crash."""
    if not path.exists():
        return
    kept = [record for record in read_metrics(path) if record["step"] <= step]
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in kept))
