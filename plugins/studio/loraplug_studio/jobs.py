"""The studio's queue: each run is an ordinary ``loraplug run`` process, one training at a time.

A job is a JSON file in ``<root>/.loraplug-studio/jobs/`` (its recipe snapshot, arguments, run directory,
process id), so the queue outlives the studio. A started run is its own session (``start_new_session``):
closing the browser or stopping the studio leaves it training, and a restarted studio finds it again by
its process id. What a run has done is read from its run directory (``run.json``, ``metrics.jsonl``)
through loraplug's own readers, never from the process's output. No job runs anything but
``python -m loraplug run RECIPE [KEY=VALUE…] [--smoke] [--resume] [--overwrite]``, with a recipe the
studio wrote itself and overrides checked by ``recipe check`` first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loraplug import LoraplugError, RunStatus
from loraplug.toolkit import atomic_write_json

QUEUED = "queued"
STARTED = "started"
ENDED = "ended"
CANCELLED = "cancelled"


@dataclass
class Job:
    id: str
    #: The recipe the run reads: a snapshot taken at enqueue (later edits of the form do not change it).
    recipe: str
    overrides: list[str]
    smoke: bool
    resume: bool
    overwrite: bool
    #: Where the run writes, relative to the studio's root.
    run_dir: str
    created: str
    state: str = QUEUED
    pid: int | None = None
    started: str | None = None
    ended: str | None = None
    returncode: int | None = None
    log: str = ""
    #: For ``loraplug export`` jobs: the export kind (the job exports ``run_dir`` instead of training).
    export_kind: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def argv(self) -> list[str]:
        if self.export_kind is not None:
            flags = ["--overwrite"] if self.overwrite else []
            return [
                sys.executable,
                "-m",
                "loraplug",
                "export",
                self.recipe,
                "--kind",
                self.export_kind,
                *flags,
            ]
        flags = [
            f
            for f, on in (("--smoke", self.smoke), ("--resume", self.resume), ("--overwrite", self.overwrite))
            if on
        ]
        return [sys.executable, "-m", "loraplug", "run", self.recipe, *self.overrides, *flags]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Jobs:
    """The queue of one studio root. :meth:`tick` (called every second by the server) starts the next
    queued job when none is training."""

    def __init__(self, root: Path, state_dir: Path) -> None:
        self.root = root
        self.directory = state_dir / "jobs"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    # -- storage ------------------------------------------------------------------------------------

    def _save(self, job: Job) -> None:
        atomic_write_json(self.directory / f"{job.id}.json", dataclasses.asdict(job))

    def all(self) -> list[Job]:
        jobs = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                jobs.append(Job(**{k: v for k, v in raw.items() if k in Job.__dataclass_fields__}))
            except (OSError, ValueError, TypeError):
                continue  # a job file being written, or another version's: not ours to read
        return sorted(jobs, key=lambda j: j.created)

    def get(self, job_id: str) -> Job | None:
        return next((j for j in self.all() if j.id == job_id), None)

    def for_run(self, run_dir: str) -> Job | None:
        """The newest job that trained ``run_dir`` (exports of it are not)."""
        found = [j for j in self.all() if j.run_dir == run_dir and j.export_kind is None]
        return found[-1] if found else None

    # -- the queue ----------------------------------------------------------------------------------

    def enqueue(
        self,
        recipe: Path,
        overrides: list[str],
        *,
        run_dir: str,
        smoke: bool,
        resume: bool = False,
        overwrite: bool = False,
        export_kind: str | None = None,
    ) -> Job:
        """Queue ``loraplug run RECIPE OVERRIDES…`` (or, with ``export_kind``, ``loraplug export RECIPE --kind
        KIND``, where ``recipe`` is the run directory); it starts at once when nothing trains."""
        job = Job(
            id=f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
            recipe=str(recipe),
            overrides=list(overrides),
            smoke=smoke,
            resume=resume,
            overwrite=overwrite,
            run_dir=run_dir,
            created=_now(),
            export_kind=export_kind,
        )
        job.log = str(self.directory / f"{job.id}.log")
        with self._lock:
            self._save(job)
        self.tick()
        return job

    def training(self) -> Job | None:
        """The started job whose process is still alive (the studio trains one at a time)."""
        for job in self.all():
            if job.state == STARTED and job.pid is not None and self._alive(job):
                return job
        return None

    def _alive(self, job: Job) -> bool:
        assert job.pid is not None  # noqa: S101 — callers check
        child = self._children.get(job.pid)
        if child is not None:  # ours: reap it, or it stays a zombie that still answers kill(0)
            return child.poll() is None
        return process_alive(job.pid)

    def tick(self) -> None:
        """Mark ended jobs, then start the first queued one when nothing trains."""
        with self._lock:
            busy = False
            for job in self.all():
                if job.state != STARTED or job.pid is None:
                    continue
                if self._alive(job):
                    busy = True
                else:
                    child = self._children.pop(job.pid, None)
                    job.state, job.ended = ENDED, _now()
                    job.returncode = child.returncode if child is not None else None
                    self._save(job)
            if busy:
                return
            queued = [j for j in self.all() if j.state == QUEUED]
            if queued:
                self._start(queued[0])

    def _start(self, job: Job) -> None:
        with open(job.log, "ab") as log:
            child = subprocess.Popen(  # noqa: S603 — a fixed argv: loraplug run on a recipe the studio wrote
                job.argv(),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,  # its own session: it outlives the browser and the studio
            )
        self._children[child.pid] = child
        job.state, job.pid, job.started = STARTED, child.pid, _now()
        self._save(job)

    def cancel(self, job_id: str) -> Job:
        with self._lock:
            job = self.get(job_id)
            if job is None or job.state != QUEUED:
                raise LoraplugError(f"job {job_id} is not waiting in the queue", fix="Reload the page")
            job.state, job.ended = CANCELLED, _now()
            self._save(job)
            return job


def stop_run(run_dir: Path, jobs: Jobs) -> str:
    """Send the run in ``run_dir`` the signal Ctrl-C sends (SIGINT): it saves a checkpoint and ends as
    ``interrupted``. Returns what was signalled."""
    import socket

    status = RunStatus.load(run_dir)
    pid = status.pid if status is not None and status.status in ("running", "exporting") else None
    if pid is None or status is None or status.host != socket.gethostname() or not process_alive(pid):
        raise LoraplugError(
            f"{run_dir.name} is not running on this machine", fix="Reload the page: it shows the run's status"
        )
    job = (
        jobs.for_run(run_dir.relative_to(jobs.root.resolve()).as_posix())
        if run_dir.is_relative_to(jobs.root.resolve())
        else None
    )
    if job is not None and job.pid == pid:
        # Ctrl-C reaches the whole foreground group (data workers included); the run is its session's leader.
        os.killpg(pid, signal.SIGINT)
        return f"process group {pid}"
    os.kill(pid, signal.SIGINT)
    return f"process {pid}"
