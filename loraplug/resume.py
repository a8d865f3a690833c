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
from loraplug.rundir import RECIPE_FILE, atomic_write_text, read_status
from loraplug.runinfo import read_metrics
from loraplug.training.checkpoint import Checkpoints


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
    run_dir: Path, recipe: Recipe, host: PluginHost, accelerator: Any, *, force: bool, warn: Callable[[str], None]
) -> Path:
    """The checkpoint to continue from, after every check a resume needs."""
    status = read_status(run_dir)
    if status is None:
        raise LoraplugError(
            f"There is no run to resume in {run_dir}",
            fix="Start it without --resume (check run.name and run.output_dir)",
        )
    if status.get("status") == "finished" and not force:
        raise LoraplugError(
            f"The run in {run_dir} already finished (step {status.get('step')}); there is nothing to resume",
            fix="To train further, raise train.max_steps and pass --resume --force; to start over, --overwrite",
        )
    checkpoint = Checkpoints(run_dir, accelerator, keep_last=recipe.train.keep_last).newest(warn=warn)
    if checkpoint is None:
        raise LoraplugError(
            f"The run in {run_dir} has no whole checkpoint to resume from",
            fix="Set train.save_every_n_steps so runs write checkpoints; this one must start over (--overwrite)",
        )
    stored = load_recipe(run_dir / RECIPE_FILE, host, check_files=False)
    changed = changed_keys(stored, recipe)
    if changed and not force:
        raise LoraplugError(
            f"The recipe changed since this run started: {', '.join(changed)}",
            where=str(run_dir / RECIPE_FILE),
            fix="Resume with the recipe it started with, or pass --resume --force to continue with the new one",
        )
    if changed and accelerator.is_main_process:
        warn(f"resuming with a changed recipe (--force): {', '.join(changed)}")
        atomic_write_text(run_dir / RECIPE_FILE, recipe.to_toml())
    return checkpoint


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines a crashed run logged after the checkpoint it is resumed from, and a line torn by the crash."""
    if not path.exists():
        return
    kept = [record for record in read_metrics(path) if record["step"] <= step]
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in kept))
