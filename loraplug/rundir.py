"""The run directory, and writing files so that a crash never leaves half of one.

Every file loraplug writes goes to a temporary name beside its destination and is renamed into place
(a rename within a directory is atomic), so a reader sees the old file or the new one, never a torn
one. ``run.json`` records the run's status, which is how a finished run is told from a crashed one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loraplug.errors import LoraplugError
from loraplug.safety import may_replace

# The run directory's layout (docs/runs.md).
STATUS_FILE = "run.json"
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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=False, default=str) + "\n")


@contextmanager
def atomic_dir(final: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes ``final`` when the block succeeds.

    On an exception the temporary directory is removed and ``final`` is untouched. With ``replace``
    an existing ``final`` is swapped out only after the new one is complete.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        if not replace:
            shutil.rmtree(tmp, ignore_errors=True)
            raise LoraplugError(f"{final} already exists", fix="Remove it or choose another name")
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


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
    launcher = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    # Its output goes to this process's terminal: a failed build's traceback is right above the error.
    done = subprocess.run([sys.executable, "-c", code], env=env, check=False)
    if done.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        raise LoraplugError(
            f"Building {target.name.lstrip('.')} failed in a subprocess (exit status {done.returncode}; its output is above)",
            fix="Report it with that output",
        )


def read_status(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


def write_status(run_dir: Path, **fields: Any) -> dict[str, Any]:
    status = read_status(run_dir) or {}
    status.update(fields)
    atomic_write_json(run_dir / STATUS_FILE, status)
    return status


def _failed_before_training(run_dir: Path, status: dict[str, Any] | None) -> bool:
    return (
        status is not None
        and status.get("status") == "failed"
        and not status.get("step")
        and not status.get("resumed_at_step")
        and not any((run_dir / CHECKPOINTS_DIR).glob("step-*"))
        and not (run_dir / ADAPTER_DIR).exists()
    )


def claim_run_dir(run_dir: Path, *, overwrite: bool, smoke: bool = False) -> Path | None:
    """Make ``run_dir`` ready for a new run without destroying anything the user has not agreed to.

    Only a loraplug run (its ``run.json``) is ever replaced (:func:`loraplug.safety.may_replace`): with
    ``overwrite``, or under ``smoke`` when it is an earlier smoke run. Returns the directory the
    previous run was moved to; it is deleted once the new run finishes, so a failed replacement loses nothing.
    """
    status = read_status(run_dir) if run_dir.is_dir() else None
    try:
        if _failed_before_training(run_dir, status):
            # A failed attempt that trained nothing holds nothing to lose: its error was shown when it
            # failed, and rerunning after a fix must not need --overwrite.
            shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True)
            return None
        earlier_smoke = bool(status and status.get("smoke") is True)
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


def _what_run(run_dir: Path, status: dict[str, Any] | None, *, smoke: bool) -> str | None:
    """The run ``run_dir`` holds, as a phrase for :func:`may_replace`; None when it holds no run."""
    if status is None:
        return f"a run whose {STATUS_FILE} cannot be read" if (run_dir / STATUS_FILE).is_file() else None
    if status.get("status") == "finished":
        what = "a finished run"
    else:
        what = f"a run that did not finish (status: {status.get('status')}, step {status.get('step', 0)})"
    if smoke and status.get("smoke") is not True:
        what += " that is not a smoke run (--smoke replaces only an earlier smoke run)"
    return what
