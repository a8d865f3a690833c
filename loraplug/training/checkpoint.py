"""Checkpoints that survive a crash at any instant, and exact resume from them.

A checkpoint holds everything the next step depends on: the trained weights, the optimizer and
schedule (and fp16 loss scaler), every process's random generators, the position in the data, the
step, and the evaluation history (best metric, patience). It is written into a temporary directory
and renamed into ``checkpoints/step-N`` only when complete, and its ``checkpoint.json`` — written last
— records each file's sha256, so a damaged checkpoint is recognised and skipped for the one before.
Only safetensors and JSON are written; nothing is pickled.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loraplug.errors import LoraplugError
from loraplug.rundir import ADAPTER_FILE, CHECKPOINTS_DIR, atomic_write_json, sha256_file
from loraplug.training import sharding, zero
from loraplug.training.batches import Position
from loraplug.training.events import LoopEvents
from loraplug.training.state import load_state, rng_state, save_state, set_rng_state
from loraplug.training.weights import load_trainable, trainable_state, write_trainable

MANIFEST = "checkpoint.json"
BEST = "best"


@dataclass
class Progress:
    """The loop's own state: where it is and what it has seen."""

    step: int = 0
    position: Position = field(default_factory=Position)
    best: dict[str, Any] | None = None  # {"metric", "value", "step"}
    stale_evals: int = 0
    skipped_steps: int = 0  # all the run skipped (logged as skipped_nan_steps)
    skipped_in_a_row: int = 0  # since the last applied update: train.on_nan = "skip" stops past a limit

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["position"] = {"epoch": self.position.epoch, "index": self.position.index}
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Progress:
        return cls(
            step=data["step"],
            position=Position(**data["position"]),
            best=data.get("best"),
            stale_evals=data.get("stale_evals", 0),
            skipped_steps=data.get("skipped_steps", 0),
            skipped_in_a_row=data.get("skipped_in_a_row", 0),
        )


def step_name(step: int) -> str:
    return f"step-{step:08d}"


class Checkpoints:
    """Saving, finding, verifying and restoring the checkpoints of one run directory."""

    def __init__(
        self,
        run_dir: Path,
        accelerator: Any,
        *,
        keep_last: int,
        events: LoopEvents | None = None,
        global_micro_batch: int | None = None,
        seed: int = 0,
        streamed: bool = False,
    ) -> None:
        self.root = run_dir / CHECKPOINTS_DIR
        self.accelerator = accelerator
        self.keep_last = keep_last
        #: Samples in one micro-batch of all processes together (``train.batch_size`` × processes): a
        #: checkpoint continues on another number of processes when this stays the same.
        self.global_micro_batch = global_micro_batch
        #: The run's seed, from which processes resuming on another count reseed their generators.
        self.seed = seed
        #: Whether the training data streams (split by process and worker, not by a global plan).
        self.streamed = streamed
        #: What a restore did that the run should say (shown above the progress bar's start).
        self.notes: list[str] = []
        self.saves = 0
        # Told when a checkpoint is half written (the full-disk test's fault).
        self.events = events or LoopEvents()

    # -- saving ------------------------------------------------------------------------------------

    def save(
        self, name: str, *, module: Any, optimizer: Any, scheduler: Any, progress: Progress, recipe_hash: str
    ) -> Path:
        """Write checkpoint ``name`` on every process's behalf; return its directory."""
        accelerator = self.accelerator
        rank, main = accelerator.process_index, accelerator.is_main_process
        final = self.root / name
        tmp = self.root / f".{name}.tmp"
        self.saves += 1
        accelerator.wait_for_everyone()
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        try:
            save_state(tmp / f"rng-{rank}.safetensors", rng_state())
            self.events.checkpoint_writing(self.saves, rank)
            accelerator.wait_for_everyone()
            # Every process takes part: under FSDP each holds one shard of every tensor, gathered here.
            weights, optimizer_state = trainable_state(module), sharding.optimizer_state(module, optimizer)
            if main:
                write_trainable(weights, tmp / ADAPTER_FILE)
                scaler = getattr(accelerator, "scaler", None)
                save_state(
                    tmp / "optimizer.safetensors",
                    {
                        "optimizer": optimizer_state,
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict() if scaler is not None else None,
                    },
                )
                files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
                atomic_write_json(
                    tmp / MANIFEST,
                    {
                        "progress": progress.as_json(),
                        "recipe_hash": recipe_hash,
                        "processes": accelerator.num_processes,
                        "global_micro_batch": self.global_micro_batch,
                        # FSDP's and DeepSpeed's optimizer state is keyed by parameter name, the others' by position.
                        **self._engine_fields(),
                        "files": files,
                    },
                )
                if final.exists():
                    old = self.root / f".{name}.old"
                    shutil.rmtree(old, ignore_errors=True)
                    os.replace(final, old)
                    os.replace(tmp, final)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(tmp, final)
        except OSError as exc:
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
            previous = self.newest()
            kept = (
                f"the last whole checkpoint ({previous.name}) is kept"
                if previous
                else "no earlier checkpoint exists"
            )
            raise LoraplugError(
                f"Could not save the checkpoint at step {progress.step}: {exc.strerror or exc}; {kept}",
                where=str(self.root),
                fix="Free disk space (or point run.output_dir at a larger disk), then continue with `loraplug run RECIPE --resume`",
            ) from exc
        accelerator.wait_for_everyone()
        if main and name != BEST:
            self.prune()
        return final

    def prune(self) -> None:
        steps = sorted(p for p in self.root.glob("step-*") if p.is_dir())
        for old in steps[: max(0, len(steps) - self.keep_last)]:
            shutil.rmtree(old, ignore_errors=True)

    # -- finding -----------------------------------------------------------------------------------

    def verify(self, path: Path) -> str | None:
        """Why ``path`` is not a whole checkpoint, or ``None`` when it is."""
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError):
            return f"{MANIFEST} is missing or unreadable"
        for name, digest in manifest.get("files", {}).items():
            if not (path / name).exists():
                return f"{name} is missing"
            if sha256_file(path / name) != digest:
                return f"{name} is damaged (its checksum does not match)"
        return None

    def problems(self) -> list[tuple[Path, str]]:
        """Each step checkpoint that is not whole, newest first, with why (see :meth:`verify`)."""
        found = (
            (path, self.verify(path))
            for path in sorted((p for p in self.root.glob("step-*") if p.is_dir()), reverse=True)
        )
        return [(path, problem) for path, problem in found if problem is not None]

    def newest(self, *, warn: Any = None) -> Path | None:
        """The newest whole step checkpoint; damaged ones are reported through ``warn`` and skipped."""
        for path in sorted((p for p in self.root.glob("step-*") if p.is_dir()), reverse=True):
            problem = self.verify(path)
            if problem is None:
                return path
            if warn is not None:
                warn(f"checkpoint {path.name} is not usable ({problem}); trying the one before")
        return None

    # -- restoring ---------------------------------------------------------------------------------

    def _engine_fields(self) -> dict[str, Any]:
        """How this run holds its trainable state, as a checkpoint's manifest records it."""
        deepspeed = zero.is_deepspeed(self.accelerator)
        return {
            "fsdp": sharding.is_fsdp(self.accelerator),
            "deepspeed_zero": zero.zero_stage(self.accelerator) if deepspeed else None,
        }

    def engine(self) -> str:
        """How this run holds its trainable state, in the words :func:`engine_of` reads a manifest with."""
        return engine_of(self._engine_fields())

    def restore(self, path: Path, *, module: Any, optimizer: Any, scheduler: Any) -> Progress:
        manifest = json.loads((path / MANIFEST).read_text())
        processes, here = manifest.get("processes", 1), self.accelerator.num_processes
        if processes != here and self.streamed:
            raise LoraplugError(
                f"Checkpoint {path.name} was written by {processes} process(es); this run has {here}, and its data "
                "streams: each process reads its own shards, so another count would not continue where it stopped",
                fix=f"Resume on {processes} process(es)",
            )
        if processes != here:
            problem = other_process_count(manifest, here, self.global_micro_batch)
            if problem is not None:
                raise LoraplugError(f"Checkpoint {path.name} {problem[0]}", fix=problem[1])
            self.notes.append(
                f"resuming {path.name} on {here} process(es) instead of {processes}, train.batch_size "
                f"{manifest['global_micro_batch'] // here}: each global micro-batch keeps its "
                f"{manifest['global_micro_batch']} samples, so the data continues exactly; dropout's random "
                "generators restart from the seed (they were per process)"
            )
        load_trainable(module, path / ADAPTER_FILE)
        state = load_state(path / "optimizer.safetensors")
        sharding.load_optimizer_state(module, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        progress = Progress.from_json(manifest["progress"])
        if processes == here:
            set_rng_state(load_state(path / f"rng-{self.accelerator.process_index}.safetensors"))
        else:  # the generators of other processes: each starts afresh from the seed, the step and its rank
            from accelerate.utils import set_seed

            set_seed(self.seed + 1_000_003 * progress.step + self.accelerator.process_index)
        return progress


def engine_of(manifest: dict[str, Any]) -> str:
    """How the run that wrote ``manifest`` held its trainable state (a checkpoint continues under any)."""
    if manifest.get("fsdp"):
        return "sharded with FSDP"
    if manifest.get("deepspeed_zero") is not None:
        return f"under DeepSpeed ZeRO-{manifest['deepspeed_zero']}"
    return "neither sharded with FSDP nor under DeepSpeed"


def other_process_count(
    manifest: dict[str, Any], here: int, global_micro_batch: int | None
) -> tuple[str, str] | None:
    """Why a checkpoint written by another number of processes cannot continue on ``here`` of them
    (what, and how to fix it), or ``None`` when it can.

    It can when each global micro-batch keeps its size (``train.batch_size`` × processes): the data's
    plan, and so the samples of every later step, are then exactly the uninterrupted run's, and the
    weights and optimizer state in a checkpoint are whole, whoever wrote them. Only the random
    generators (dropout) cannot continue: they were per process."""
    processes, written = manifest.get("processes", 1), manifest.get("global_micro_batch")
    if written is not None and written == global_micro_batch:
        return None
    what = f"was written by {processes} process(es)"
    if written is None:
        return f"{what}; this run has {here}", "Resume with the same number of processes"
    what += f" with global micro-batches of {written} samples; this run has {here} process(es)"
    if global_micro_batch is not None:
        what += f" with {global_micro_batch}"
    if written % here == 0:
        fix = (f"Resume on {here} process(es) with train.batch_size = {written // here}, so each global micro-batch "
               f"holds the same {written} samples, or on {processes} process(es)")  # fmt: skip
    else:
        fix = f"Resume on {processes} process(es), or on a number of processes that divides {written}"
    return what, fix
