"""The progress display: a rich bar on a terminal, plain log lines elsewhere (CI, files, pipes)."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn


def _fmt_rate(per_s: float) -> str:
    if per_s >= 1000:
        return f"{per_s / 1000:.1f}k"
    return f"{per_s:.0f}" if per_s >= 10 else f"{per_s:.1f}"


# Short names of PreparedData.unit for the progress line; any other unit is shown as it is.
SHORT_UNITS = {"tokens": "tok", "images": "img"}


class ProgressDisplay:
    """Shows step, loss, lr, throughput (tokens/s, images/s) and ETA; silent on processes other than the main one."""

    def __init__(
        self, console: Console, total_steps: int, *, enabled: bool, start_step: int = 0, unit: str = "tokens"
    ) -> None:
        self.rate_label = f"{SHORT_UNITS.get(unit, unit)}/s"
        self.console = console
        self.total = total_steps
        self.enabled = enabled
        self.live = enabled and console.is_terminal
        self.started = time.monotonic()
        self.start_step = start_step
        self._progress: Progress | None = None
        self._task = TaskID(0)

    def __enter__(self) -> ProgressDisplay:
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]step {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn(
                    "loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[rate]} " + self.rate_label
                ),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(
                "train", total=self.total, completed=self.start_step, loss="-", lr="-", rate="-"
            )
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)

    def update(self, step: int, *, loss: float, lr: float, tokens_per_s: float, log: bool) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.update(
                self._task, completed=step, loss=f"{loss:.4f}", lr=f"{lr:.2e}", rate=_fmt_rate(tokens_per_s)
            )
        elif log:
            elapsed = time.monotonic() - self.started
            done = step - self.start_step
            eta = elapsed / done * (self.total - step) if done else 0.0
            self.console.print(
                f"step {step}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  {_fmt_rate(tokens_per_s)} {self.rate_label}  ETA {eta:.0f}s",
                highlight=False,
            )

    def note(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, highlight=False)
