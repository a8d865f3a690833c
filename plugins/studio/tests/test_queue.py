"""The studio's queue: one `loraplug run` process at a time, a failure never blocks the next, and a
restarted studio finds the run still training (each run is its own process, in its own session)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from loraplug_studio.jobs import ENDED, QUEUED, STARTED, Jobs


def wait_until_ended(jobs: Jobs, job_id: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        jobs.tick()
        job = jobs.get(job_id)
        if job is not None and job.state == ENDED:
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end in {seconds} s")


def test_one_run_at_a_time_and_a_failure_does_not_block_the_next(tmp_path: Path) -> None:
    state = tmp_path / ".loraplug-studio"
    jobs = Jobs(tmp_path, state)
    # Recipes that do not exist: `loraplug run` says so and exits 2, quickly, as a real failed run does.
    first = jobs.enqueue(tmp_path / "missing-1.toml", [], run_dir="runs/one", smoke=False)
    second = jobs.enqueue(tmp_path / "missing-2.toml", ["train.lr=1e-4"], run_dir="runs/two", smoke=True)
    assert jobs.get(first.id).state == STARTED
    assert jobs.get(second.id).state == QUEUED  # waits: one training at a time

    # A restarted studio on the same root finds the run by its process id (until this studio reaps it,
    # the process exists, alive or ended).
    running = Jobs(tmp_path, state).training()
    assert running is not None and running.id == first.id

    wait_until_ended(jobs, first.id)
    assert jobs.get(first.id).returncode == 2
    assert "Recipe file not found" in Path(jobs.get(first.id).log).read_text()
    assert jobs.get(second.id).state == STARTED  # the failure did not block it
    assert jobs.get(second.id).argv()[-3:] == [str(tmp_path / "missing-2.toml"), "train.lr=1e-4", "--smoke"]
    wait_until_ended(jobs, second.id)


def test_a_run_is_its_own_session(tmp_path: Path) -> None:
    """Started with start_new_session: Ctrl-C in the studio's terminal and the studio's exit leave it alone."""
    jobs = Jobs(tmp_path, tmp_path / ".state")
    job = jobs.enqueue(tmp_path / "missing.toml", [], run_dir="runs/x", smoke=False)
    started = jobs.get(job.id)
    assert started.pid is not None
    try:
        assert os.getsid(started.pid) == started.pid != os.getsid(0)
    except ProcessLookupError:
        pass  # it already ended (its recipe is missing): the session cannot be asked any more
    wait_until_ended(jobs, job.id)
