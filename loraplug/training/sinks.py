"""Where metrics go: ``metrics.jsonl`` and TensorBoard in the run directory, on the main process only."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Protocol


class MetricSink(Protocol):
    """Receives every logged metric, sample text and image; plugins add their own sinks.

    ``split`` is ``"train"`` or ``"eval"``. ``close`` gets the run's final status:
    ``"finished"``, ``"failed"`` or ``"interrupted"``.
    """

    def log(self, step: int, metrics: dict[str, float], *, split: str) -> None: ...

    def log_text(self, step: int, name: str, text: str) -> None: ...

    def log_image(self, step: int, name: str, path: Path) -> None: ...

    def close(self, status: str) -> None: ...


class JsonlSink:
    """One JSON line per logged step or evaluation: ``{"step": 10, "split": "train", "loss": ...}``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 — closed in close()

    def log(self, step: int, metrics: dict[str, float], *, split: str) -> None:
        record: dict[str, Any] = {"step": step, "split": split, "time": round(time.time(), 3), **metrics}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def log_text(self, step: int, name: str, text: str) -> None:
        pass

    def log_image(self, step: int, name: str, path: Path) -> None:
        pass

    def close(self, status: str) -> None:
        self._file.close()


class TensorBoardSink:
    """Scalars under ``tb/`` as ``train/loss``, ``eval/val_loss``…"""

    def __init__(self, path: Path, *, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run hides what the crashed one logged after its checkpoint.
        self._writer = SummaryWriter(log_dir=str(path), purge_step=purge_step)

    def log(self, step: int, metrics: dict[str, float], *, split: str) -> None:
        for name, value in metrics.items():
            self._writer.add_scalar(f"{split}/{name}", value, step)
        self._writer.flush()

    def log_text(self, step: int, name: str, text: str) -> None:
        self._writer.add_text(name, text, step)

    def log_image(self, step: int, name: str, path: Path) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as image:
            self._writer.add_image(name, np.asarray(image.convert("RGB")), step, dataformats="HWC")
        self._writer.flush()

    def close(self, status: str) -> None:
        self._writer.close()


class Sinks:
    """Fan-out to every sink; a no-op on processes that do not write."""

    def __init__(self, sinks: list[MetricSink]) -> None:
        self.sinks = sinks

    def log(self, step: int, metrics: dict[str, float], *, split: str) -> None:
        for sink in self.sinks:
            sink.log(step, metrics, split=split)

    def log_text(self, step: int, name: str, text: str) -> None:
        for sink in self.sinks:
            sink.log_text(step, name, text)

    def log_image(self, step: int, name: str, path: Path) -> None:
        for sink in self.sinks:
            sink.log_image(step, name, path)

    def close(self, status: str) -> None:
        """Close every sink once; later calls do nothing."""
        closing, self.sinks = self.sinks, []
        for sink in closing:
            sink.close(status)
