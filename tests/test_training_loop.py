"""The training loop's event points: what the failure tests install, instead of branches in the loop.

A run is set up through loraplug.run.Run's own phases (claim, start, setup) and its training loop is
called with a recorder of events: each point is told, in order, with the counts the faults of
loraplug.training.faults are addressed by.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from loraplug import StepResult, load_plugins
from loraplug.recipe import load_recipe
from loraplug.run import Run, Setup
from loraplug.testing import run_cli
from loraplug.training.events import LoopEvents
from loraplug.training.loop import Interrupted, TrainResult, train
from loraplug.training.progress import ProgressDisplay


class Recorder(LoopEvents):
    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def after_forward(self, micro: int, rank: int, out: Any) -> None:
        assert isinstance(out, StepResult) and rank == 0
        self.seen.append(("forward", micro))

    def after_backward(self, micro: int, rank: int) -> None:
        self.seen.append(("backward", micro))

    def after_step(self, step: int, rank: int) -> None:
        self.seen.append(("step", step))

    def checkpoint_writing(self, save: int, rank: int) -> None:
        self.seen.append(("checkpoint", save))


def _set_up(recipe_path: Path) -> tuple[Run, Setup]:
    """A run set up through Run's own phases, ready for its training loop."""
    quiet = Console(quiet=True)
    run = Run(load_recipe(recipe_path, load_plugins()), load_plugins(), console=quiet)
    claim = run.claim()
    return run, run.setup(run.start(claim), claim)


def _train(run: Run, setup: Setup, events: LoopEvents) -> TrainResult:
    """The set-up run's training loop, told ``events``."""
    quiet = Console(quiet=True)
    return train(
        accelerator=run.accelerator,
        step_fn=setup.step_fn,
        model=setup.model,
        prepared=setup.prepared,
        recipe=setup.ctx.recipe,
        ctx=setup.ctx,
        sinks=run.sinks,
        evaluate=setup.evaluator,
        display=lambda total, start: ProgressDisplay(quiet, total, enabled=False, start_step=start),
        events=events,
    )


def test_the_loop_tells_its_events_each_point_in_order(lm_recipe: Any) -> None:
    run, setup = _set_up(
        lm_recipe(export=[], train={"grad_accum_steps": 2, "save_every_n_steps": 2}, eval={"use_best": False})
    )
    events = Recorder()
    try:
        result = _train(run, setup, events)
    finally:
        run.sinks.close("finished")
    assert result.steps == 4
    expected: list[tuple[str, int]] = []
    for step in range(1, 5):  # two micro-batches a step, counted over the run; a checkpoint every 2 steps
        for micro in (2 * step - 1, 2 * step):
            expected += [("forward", micro), ("backward", micro)]
        expected.append(("step", step))
        if step % 2 == 0:
            expected.append(("checkpoint", step // 2))
    assert events.seen == expected
    assert (run.run_dir / "checkpoints" / "step-00000004").is_dir()


def test_a_skipped_last_step_is_still_the_runs_last_step(
    tmp_path: Path, toy_recipe_file: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's step counts a step whose update a NaN loss skipped: the final evaluation, the last
    checkpoint and run.json name step 4 of 4, not the last step that updated the weights."""
    monkeypatch.setenv("LORAPLUG_FAULT", "nan:micro=4")  # one micro-batch a step: step 4's loss is NaN
    recipe = toy_recipe_file(train={"max_steps": 4, "on_nan": "skip", "save_every_n_steps": 2}, export=[])
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    assert "The loss became nan at step 4" in result.stdout
    status = json.loads((tmp_path / "runs" / "tiny" / "run.json").read_text())
    assert status["status"] == "finished" and status["step"] == 4
    assert [e["step"] for e in status["evaluations"]] == [0, 4]
    checkpoints = sorted(p.name for p in (tmp_path / "runs" / "tiny" / "checkpoints").glob("step-*"))
    assert checkpoints == ["step-00000002", "step-00000004"]


class NanAndSignal(LoopEvents):
    """Micro-batch ``micro``'s loss is NaN, and SIGTERM arrives while it is computed."""

    def __init__(self, micro: int) -> None:
        self.micro = micro

    def after_forward(self, micro: int, rank: int, out: Any) -> None:
        if micro == self.micro:
            out.loss_sum = out.loss_sum * float("nan")
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_signal_during_a_skipped_step_stops_at_that_step(toy_recipe_file: Any) -> None:
    run, setup = _set_up(toy_recipe_file(train={"max_steps": 4, "on_nan": "skip"}, export=[]))
    try:
        with pytest.raises(Interrupted, match="Stopped by SIGTERM at step 2"):
            _train(run, setup, NanAndSignal(micro=2))
    finally:
        run.sinks.close("interrupted")
    assert [p.name for p in (run.run_dir / "checkpoints").glob("step-*")] == ["step-00000002"]


class NanOnSteps(LoopEvents):
    """The loss of each micro-batch in ``micros`` is NaN (one micro-batch a step: micro N is step N)."""

    def __init__(self, micros: set[int]) -> None:
        self.micros = micros

    def after_forward(self, micro: int, rank: int, out: Any) -> None:
        if micro in self.micros:
            out.loss_sum = out.loss_sum * float("nan")


def test_skipped_steps_stop_a_run_only_when_too_many_come_in_a_row(toy_recipe_file: Any) -> None:
    # MAX_SKIPPED_IN_A_ROW is 10: twelve NaN steps, never two in a row, are twelve skips and a finished run
    # (the count was of every skip, so the eleventh stopped it) ...
    recipe = toy_recipe_file(
        train={"max_steps": 24, "on_nan": "skip", "batch_size": 2}, export=[], eval={"sample_prompts": []}
    )
    run, setup = _set_up(recipe)
    try:
        result = _train(run, setup, NanOnSteps({2 * k for k in range(1, 13)}))
    finally:
        run.sinks.close("finished")
    assert result.steps == 24
    # ... while eleven in a row stop it, naming the limit.
    run, setup = _set_up(
        toy_recipe_file(
            train={"max_steps": 24, "on_nan": "skip", "batch_size": 2},
            export=[],
            eval={"sample_prompts": []},
            run={"name": "again"},
        )
    )
    try:
        with pytest.raises(Exception, match="10 steps in a row skipped before"):
            _train(run, setup, NanOnSteps(set(range(3, 14))))
    finally:
        run.sinks.close("failed")
