"""The training loop's event points: what the failure tests install, instead of branches in the loop.

A run is set up through loraplug.run.Run's own phases (claim, start, setup) and its training loop is
called with a recorder of events: each point is told, in order, with the counts the faults of
loraplug.training.faults are addressed by.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from loraplug import StepResult, load_plugins
from loraplug.recipe import load_recipe
from loraplug.run import Run
from loraplug.training.events import LoopEvents
from loraplug.training.loop import train
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


def test_the_loop_tells_its_events_each_point_in_order(lm_recipe: Any) -> None:
    path = lm_recipe(
        export=[], train={"grad_accum_steps": 2, "save_every_n_steps": 2}, eval={"use_best": False}
    )
    quiet = Console(quiet=True)
    run = Run(load_recipe(path, load_plugins()), load_plugins(), console=quiet)
    claim = run.claim()
    setup = run.setup(run.start(claim), claim)
    events = Recorder()
    try:
        result = train(
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
