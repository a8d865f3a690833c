"""The run directory: its layout, claiming it for a new run, and cached builds.

Files are written whole (:mod:`loraplug.atomic`, re-exported here). ``run.json`` records the run's
status (:class:`loraplug.status.RunStatus`), which is how a finished run is told from a crashed one.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from loraplug.atomic import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text
from loraplug.errors import LoraplugError
from loraplug.safety import may_replace
from loraplug.status import STATUS_FILE, RunStatus

__all__ = [
    "ADAPTER_DIR", "ADAPTER_FILE", "CHECKPOINTS_DIR", "EXPORTS_DIR", "METRICS_FILE", "RECIPE_FILE", "SAMPLES_DIR",
    "STATUS_FILE", "atomic_dir", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "build_once",
    "claim_run_dir", "sha256_file",
]  # fmt: skip

# The run directory's layout (docs/runs.md); STATUS_FILE is loraplug.status's.
RECIPE_FILE = "recipe.toml"
ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"
EXPORTS_DIR = "exports"
ADAPTER_FILE = "adapter.safetensors"
SAMPLES_DIR = "samples"
METRICS_FILE = "metrics.jsonl"


def sha256_file(path: Path) -> str:
    """The file's SHA-256, read in 1 MiB blocks (adapters and merged models can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_once(final: Path, build: Callable[[Path], None], *, marker: str) -> Path:
    """A cached directory (a tiny model preset…), built by ``build`` on first use; ``final/marker`` says it is done.

    ``build`` writes into a temporary sibling that is renamed into place, so parallel processes (test
    workers, the ranks of a distributed run) never see half of one; when two build at once, the first
    rename wins and the other's identical copy is dropped.

    In a distributed run the build happens in a fresh subprocess: transformers' ``save_pretrained``
    writes nothing on any rank but 0 once ``torch.distributed`` is initialised, which would leave a
    preset without its weights. ``build`` must then be a module-level function.
    """
    if (final / marker).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if _distributed_initialized():
        _build_in_subprocess(build, tmp)
    else:
        build(tmp)
    if not (tmp / marker).exists():
        shutil.rmtree(tmp, ignore_errors=True)
        raise LoraplugError(
            f"Building {final.name} wrote no {marker}",
            fix=f"Report it with the output above; removing {final.parent} and running again rebuilds every preset",
        )
    try:
        os.replace(tmp, final)
    except OSError:  # another process finished first; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _distributed_initialized() -> bool:
    import sys

    dist = sys.modules.get("torch.distributed")  # never import torch just to ask
    return bool(dist is not None and dist.is_available() and dist.is_initialized())


def _build_in_subprocess(build: Callable[[Path], None], target: Path) -> None:
    import subprocess
    import sys

    code = f"from {build.__module__} import {build.__qualname__} as build; build(__import__('pathlib').Path({str(target)!r}))"
    launcher = (
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "GROUP_RANK",
    )
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    # Its output goes to this process's terminal: a failed build's traceback is right above the error.
    done = subprocess.run([sys.executable, "-c", code], env=env, check=False)
    if done.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        raise LoraplugError(
            f"Building {target.name.lstrip('.')} failed in a subprocess (exit status {done.returncode}; its output is above)",
            fix="Report it with that output",
        )


#: What a run writes at the top of its directory (report.py's page and its folder, TensorBoard's events).
RUN_WRITES = frozenset(
    {
        RECIPE_FILE,
        STATUS_FILE,
        METRICS_FILE,
        SAMPLES_DIR,
        CHECKPOINTS_DIR,
        ADAPTER_DIR,
        EXPORTS_DIR,
        "tb",
        "report",
        "report.html",
    }
)
_ATOMIC_TEMPORARY = re.compile(r"^\..+\.tmp-\d+$")  # loraplug.atomic's name for a file being written


def _failed_before_training(run_dir: Path, status: RunStatus | None) -> bool:
    return (
        status is not None
        and status.status == "failed"
        and not status.step
        and not status.resumed_at_step
        and not any((run_dir / CHECKPOINTS_DIR).glob("step-*"))
        and not (run_dir / ADAPTER_DIR).exists()
        # Deleted without a flag only while it holds nothing but what the run wrote: a file the user put
        # beside it makes it a directory to replace with --overwrite, like any other run.
        and all(
            entry.name in RUN_WRITES or _ATOMIC_TEMPORARY.match(entry.name) for entry in run_dir.iterdir()
        )
    )


def claim_run_dir(run_dir: Path, *, overwrite: bool, smoke: bool = False) -> Path | None:
    """Make ``run_dir`` ready for a new run without destroying anything the user has not agreed to.

    Only a loraplug run (its ``run.json``) is ever replaced (:func:`loraplug.safety.may_replace`): with
    ``overwrite``, or under ``smoke`` when it is an earlier smoke run. Returns the directory the
    previous run was moved to; it is deleted once the new run finishes, so a failed replacement loses nothing.
    """
    status = RunStatus.load(run_dir) if run_dir.is_dir() else None
    try:
        if _failed_before_training(run_dir, status):
            # A failed attempt that trained nothing holds nothing to lose: its error was shown when it
            # failed, and rerunning after a fix must not need --overwrite.
            shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True)
            return None
        earlier_smoke = bool(status and status.smoke)
        replace = may_replace(
            run_dir,
            holds=_what_run(run_dir, status, smoke=smoke),
            overwrite=overwrite or (smoke and earlier_smoke),
            key="The run directory",
            ours=f"a loraplug run (it has no {STATUS_FILE})",
            replacing="the old run is deleted only once the new one finishes",
            elsewhere="set run.name / run.output_dir to write elsewhere",
        )
        if replace:
            aside = run_dir.with_name(f".{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(run_dir, aside)
            run_dir.mkdir(parents=True)
            return aside
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # read-only, a full disk, a kernel filesystem: say which key to change
        raise LoraplugError(
            f"Cannot create the run directory {run_dir}: {exc.strerror or exc}",
            where="run.output_dir",
            fix="Set run.output_dir to a directory you can write to",
        ) from exc
    return None


def _what_run(run_dir: Path, status: RunStatus | None, *, smoke: bool) -> str | None:
    """The run ``run_dir`` holds, as a phrase for :func:`may_replace`; None when it holds no run."""
    if status is None:
        return f"a run whose {STATUS_FILE} cannot be read" if (run_dir / STATUS_FILE).is_file() else None
    if status.status == "finished":
        what = "a finished run"
    else:
        what = f"a run that did not finish (status: {status.status}, step {status.step})"
    if smoke and not status.smoke:
        what += " that is not a smoke run (--smoke replaces only an earlier smoke run)"
    return what
