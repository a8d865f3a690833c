"""Points in the training loop where something outside it may act, without the loop knowing what.

The loop calls an :class:`LoopEvents` at each point; the base class does nothing there. The failure
tests install :class:`loraplug.training.faults.Faults` (a killed process, an error, a full disk, a NaN
loss at a chosen micro-batch or step) through ``train(events=...)``, so the loop itself carries no
test-only branches.
"""

from __future__ import annotations

from typing import Any


class LoopEvents:
    """No-ops at every point; override the ones you need. ``rank`` is the process's index."""

    def after_forward(self, micro: int, rank: int, out: Any) -> None:
        """The ``micro``-th micro-batch of the run (from 1) went forward; ``out`` is its StepResult, before backward."""

    def after_backward(self, micro: int, rank: int) -> None:
        """The ``micro``-th micro-batch's backward pass is done (the optimizer has not stepped yet)."""

    def after_step(self, step: int, rank: int) -> None:
        """Optimizer step ``step`` updated the weights; it is not logged, evaluated or checkpointed yet."""

    def checkpoint_writing(self, save: int, rank: int) -> None:
        """The ``save``-th checkpoint of this process is half written (its random-generator state only)."""
