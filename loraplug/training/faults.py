"""Deliberate failures, for the tests that prove a run survives them.

Set ``LORAPLUG_FAULT`` to one fault; a run then installs :class:`Faults` as the training loop's events
(:func:`from_env`), and nothing happens when it is unset:

* ``kill:micro=N`` — SIGKILL this process just after its N-th micro-batch's backward pass (counting
  from 1 over the whole run), e.g. in the middle of an accumulation cycle;
* ``raise:step=N[:rank=R]`` — raise an error after optimizer step N (on process R only);
* ``enospc:checkpoint=N`` — fail the N-th checkpoint save of this process with "No space left on device";
* ``nan:micro=N`` — make the N-th micro-batch's loss NaN.
"""

from __future__ import annotations

import errno
import os
import signal
from typing import Any

from loraplug.training.events import LoopEvents

#: The environment variable naming the fault.
FAULT_VARIABLE = "LORAPLUG_FAULT"


class Faults(LoopEvents):
    """One fault (``action`` at the point and count ``where`` names), raised when the loop reaches it."""

    def __init__(self, action: str, where: dict[str, int]) -> None:
        self.action = action
        self.where = where

    def _here(self, point: str, count: int, rank: int) -> bool:
        return self.where.get(point) == count and self.where.get("rank", rank) == rank

    def _fail(self, point: str, count: int, rank: int) -> None:
        if not self._here(point, count, rank):
            return
        if self.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.action == "raise":
            raise RuntimeError(f"injected failure after {point} {count} on process {rank} ({FAULT_VARIABLE})")
        if self.action == "enospc":
            raise OSError(errno.ENOSPC, f"No space left on device (injected by {FAULT_VARIABLE})")

    def after_forward(self, micro: int, rank: int, out: Any) -> None:
        if self.action == "nan" and self._here("micro", micro, rank):
            out.loss_sum = out.loss_sum * float("nan")

    def after_backward(self, micro: int, rank: int) -> None:
        self._fail("micro", micro, rank)

    def after_step(self, step: int, rank: int) -> None:
        self._fail("step", step, rank)

    def checkpoint_writing(self, save: int, rank: int) -> None:
        self._fail("checkpoint", save, rank)


def from_env() -> Faults | None:
    """The fault ``LORAPLUG_FAULT`` asks for, read now; ``None`` when it is unset or empty."""
    raw = os.environ.get(FAULT_VARIABLE, "").strip()
    if not raw:
        return None
    action, *fields = raw.split(":")
    return Faults(action, {k: int(v) for k, v in (f.split("=") for f in fields)})
