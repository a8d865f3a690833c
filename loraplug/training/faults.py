"""Deliberate failures, for the tests that prove a run survives them.

Set ``LORAPLUG_FAULT`` to one fault; nothing happens when it is unset:

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
from functools import cache


@cache
def _spec() -> tuple[str, dict[str, int]] | None:
    raw = os.environ.get("LORAPLUG_FAULT", "").strip()
    if not raw:
        return None
    action, *fields = raw.split(":")
    return action, {k: int(v) for k, v in (f.split("=") for f in fields)}


def inject(point: str, count: int, rank: int = 0) -> None:
    """Fail here if ``LORAPLUG_FAULT`` asks for a failure at this point and count."""
    spec = _spec()
    if spec is None:
        return
    action, where = spec
    if where.get(point) != count or where.get("rank", rank) != rank:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "raise":
        raise RuntimeError(f"injected failure after {point} {count} on process {rank} (LORAPLUG_FAULT)")
    if action == "enospc":
        raise OSError(errno.ENOSPC, "No space left on device (injected by LORAPLUG_FAULT)")


def poisoned(point: str, count: int, rank: int = 0) -> bool:
    """Whether ``LORAPLUG_FAULT`` asks for a NaN loss at this point and count."""
    spec = _spec()
    return spec is not None and spec[0] == "nan" and spec[1].get(point) == count and spec[1].get("rank", rank) == rank


def reset() -> None:
    """Forget the cached fault (tests that change ``LORAPLUG_FAULT`` in-process)."""
    _spec.cache_clear()
