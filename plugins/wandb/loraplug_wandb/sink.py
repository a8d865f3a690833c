"""A metric sink writing to one W&B run per loraplug run.

Metrics are logged as ``train/loss``, ``eval/val_loss``… against a ``step`` axis of their own
(``define_metric``) rather than wandb's internal step, so evaluations logged at the same step as
training metrics, and a resumed run that logs a step again, are never dropped as out of order.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from loraplug import Artifact, LoraplugError, RunContext
from loraplug.toolkit import artifact_as_text, atomic_write_text

#: The W&B run id, kept in the run directory so that a resumed loraplug run continues the same W&B run.
RUN_ID_FILE = "wandb-run-id"
STEP_KEY = "step"
TEXT_KEY = "samples/text"
DEFAULT_PROJECT = "loraplug"
#: How ``close(status)`` ends the W&B run: 0 is "finished", anything else "failed".
EXIT_CODES = {"finished": 0, "interrupted": 130}


class WandbSink:
    """Forwards scalars and samples to a W&B run: texts as one incremental table, images, audio and
    tables as W&B media of their type."""

    def __init__(self, run: Any, ctx: RunContext) -> None:
        import wandb

        self._wandb = wandb
        self._run = run
        self._warn = ctx.warn
        self._texts = wandb.Table(columns=["step", "name", "text"], log_mode="INCREMENTAL")
        self._pending_step: int | None = None
        run.define_metric(STEP_KEY)
        run.define_metric("*", step_metric=STEP_KEY, step_sync=True)

    @classmethod
    def start(cls, ctx: RunContext) -> WandbSink:
        """Open (or, for a resumed run, reopen) the W&B run; wandb's settings come from its WANDB_* variables."""
        import wandb

        recipe = ctx.recipe
        wandb_dir = Path(os.environ.get("WANDB_DIR") or ctx.run_dir)
        wandb_dir.mkdir(parents=True, exist_ok=True)
        # loraplug draws its own progress bar; wandb capturing the console would garble it unless asked.
        settings = wandb.Settings() if "WANDB_CONSOLE" in os.environ else wandb.Settings(console="off")
        try:
            run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
                name=recipe.run.name,
                id=_run_id(ctx.run_dir),
                resume="allow",
                dir=str(wandb_dir),
                config=recipe.resolved(),
                tags=sorted(
                    {recipe.model.kind, recipe.adapter.kind, recipe.data.kind}
                    | ({"smoke"} if ctx.smoke else set())
                ),
                job_type="smoke" if ctx.smoke else "train",
                notes=f"loraplug run directory: {ctx.run_dir}",
                settings=settings,
            )
        except wandb.errors.Error as exc:
            raise LoraplugError(
                f"Weights & Biases could not start a run: {exc}",
                where="LORAPLUG_WANDB=1",
                fix="Run `wandb login`, set WANDB_MODE=offline to log locally and `wandb sync` later, "
                "or unset LORAPLUG_WANDB",
            ) from exc
        return cls(run, ctx)  # wandb itself prints where the run goes (a URL, or `wandb sync` offline)

    def log(self, step: int, metrics: dict[str, float], *, split: str) -> None:
        self._flush_texts()
        self._run.log({STEP_KEY: step, **{f"{split}/{name}": value for name, value in metrics.items()}})

    def log_text(self, step: int, name: str, text: str) -> None:
        # The samples of one step arrive one by one; they go to W&B as one increment of the table.
        if self._pending_step is not None and self._pending_step != step:
            self._flush_texts()
        self._texts.add_data(step, name, text)
        self._pending_step = step

    def log_image(self, step: int, name: str, path: Path) -> None:
        self._flush_texts()
        self._run.log({STEP_KEY: step, name: self._wandb.Image(str(path), caption=f"{name} at step {step}")})

    def log_sample(self, step: int, name: str, prompt: str, artifact: Artifact) -> None:
        """Text into the samples table, images as wandb.Image, audio as wandb.Audio, tables as wandb.Table."""
        caption = f"{prompt} — step {step}" + (f" — {artifact.caption}" if artifact.caption else "")
        if artifact.type == "text":
            self.log_text(step, name, artifact_as_text(prompt, artifact))
            return
        self._flush_texts()
        if artifact.type == "image":
            value = self._wandb.Image(str(artifact.value), caption=caption)
        elif artifact.type == "audio":
            value = self._wandb.Audio(str(artifact.value), caption=caption)
        else:
            rows = artifact.value
            columns = list(rows[0]) if rows else []
            value = self._wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])
        self._run.log({STEP_KEY: step, name: value})

    def close(self, status: str) -> None:
        # Called from the run's `finally`: an error here must not hide the run's own error.
        try:
            self._flush_texts()
            if status == "interrupted":
                self._run.mark_preempting()
            self._run.finish(exit_code=EXIT_CODES.get(status, 1))
        except Exception as exc:  # noqa: BLE001
            self._warn(f"wandb could not close its run cleanly: {exc}")

    def _flush_texts(self) -> None:
        if self._pending_step is not None:
            self._run.log({STEP_KEY: self._pending_step, TEXT_KEY: self._texts})
            self._pending_step = None


def _run_id(run_dir: Path) -> str:
    """The W&B run id of this run directory, made on first use."""
    path = run_dir / RUN_ID_FILE
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        run_id = secrets.token_hex(6)  # W&B ids are [a-z0-9], unique per project
        atomic_write_text(path, run_id + "\n")
        return run_id
