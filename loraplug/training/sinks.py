"""Where metrics go: ``metrics.jsonl`` and TensorBoard in the run directory, on the main process only.

Generated samples reach sinks as typed artifacts (:class:`loraplug.Artifact`: text, image, audio,
table) through ``log_sample``, and each sink renders them by type, so a new modality's samples need
no change here. A sink written before ``log_sample`` existed still gets images through ``log_image``
and everything else as text through ``log_text`` — each only if it has it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from loraplug.bundles import Artifact


class MetricSink(Protocol):
    """Receives every logged metric and generated sample; plugins add their own sinks.

    ``log`` gets the metrics of a step; ``split`` is ``"train"`` or ``"eval"``. ``log_sample`` gets each
    output of a sample as a typed :class:`loraplug.Artifact` (``name`` is ``samples/<index>``, ``prompt``
    what it was generated from): render the types your tracker shows and ignore the rest (a sink that
    keeps scalars only does nothing there). ``close`` gets the run's final status: ``"finished"``,
    ``"failed"`` or ``"interrupted"``.

    A sink written before samples were typed may have ``log_text(step, name, text)`` and
    ``log_image(step, name, path)`` instead of ``log_sample``: the core then sends it images through
    ``log_image`` and everything else as Markdown through ``log_text``, each only if it has it.
    """

    def log(self, step: int, metrics: dict[str, float], *, split: str) -> None: ...

    def log_sample(self, step: int, name: str, prompt: str, artifact: Artifact) -> None: ...

    def close(self, status: str) -> None: ...


def artifact_as_text(prompt: str, artifact: Artifact) -> str:
    """An artifact as Markdown text, for sinks that show text only: text as it is, a table as a
    Markdown table, a file by its path."""
    heading = f"**{prompt}**\n\n" + (f"*{artifact.caption}*\n\n" if artifact.caption else "")
    if artifact.type == "text":
        return heading + str(artifact.value)
    if artifact.type == "table":
        return heading + markdown_table(artifact.value)
    return heading + f"({artifact.type}: {artifact.value})"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    columns = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def read_wav(path: Path) -> tuple[Any, int]:
    """A WAV file as float samples in [-1, 1] (mono: channels averaged) and its sample rate."""
    import wave

    import numpy as np

    with wave.open(str(path), "rb") as wav:
        width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
        frames = wav.readframes(wav.getnframes())
    if width == 1:  # 8-bit WAV is unsigned, centred on 128
        samples = np.frombuffer(frames, dtype=np.uint8).astype(np.float32) - 128
        full_scale = 128.0
    else:
        integers: dict[int, np.dtype[np.signedinteger[Any]]] = {2: np.dtype(np.int16), 4: np.dtype(np.int32)}
        integer = integers[width]
        samples = np.frombuffer(frames, dtype=integer).astype(np.float32)
        full_scale = float(np.iinfo(integer).max)
    return (samples / full_scale).reshape(-1, channels).mean(axis=1), rate


class JsonlSink:
    """One JSON line per logged step or evaluation: ``{"step": 10, "split": "train", "loss": ...}``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 — closed in close()

    def log(self, step: int, metrics: dict[str, float], *, split: str) -> None:
        record: dict[str, Any] = {"step": step, "split": split, "time": round(time.time(), 3), **metrics}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def log_sample(self, step: int, name: str, prompt: str, artifact: Artifact) -> None:
        pass  # samples/step-N.json holds them

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

    def log_sample(self, step: int, name: str, prompt: str, artifact: Artifact) -> None:
        """Text and tables in the Text tab, images in Images, audio in Audio."""
        if artifact.type == "image":
            self.log_image(step, name, artifact.value)
        elif artifact.type == "audio":
            import torch

            samples, rate = read_wav(artifact.value)
            self._writer.add_audio(name, torch.from_numpy(samples), step, sample_rate=rate)
            self._writer.flush()
        else:
            self.log_text(step, name, artifact_as_text(prompt, artifact))

    def close(self, status: str) -> None:
        self._writer.close()


class Sinks:
    """Fan-out to every sink; a no-op on processes that do not write."""

    def __init__(self, sinks: list[MetricSink]) -> None:
        self.sinks = sinks

    def log(self, step: int, metrics: dict[str, float], *, split: str) -> None:
        for sink in self.sinks:
            sink.log(step, metrics, split=split)

    def log_sample(self, step: int, name: str, prompt: str, artifact: Artifact) -> None:
        """One output of a generated sample, to each sink by its ``log_sample`` — or, for a sink written
        before samples were typed, images to its ``log_image`` and everything else as text to its
        ``log_text``, where it has them."""
        for sink in self.sinks:
            if hasattr(sink, "log_sample"):
                sink.log_sample(step, name, prompt, artifact)
            elif artifact.type == "image":
                _call_if_present(sink, "log_image", step, name, artifact.value)
            else:
                _call_if_present(sink, "log_text", step, name, artifact_as_text(prompt, artifact))

    def close(self, status: str) -> None:
        """Close every sink once; later calls do nothing."""
        closing, self.sinks = self.sinks, []
        for sink in closing:
            sink.close(status)


def _call_if_present(sink: object, method: str, *args: Any) -> None:
    """An older sink's ``log_text`` / ``log_image``: neither is required (a sink renders what it can)."""
    render = getattr(sink, method, None)
    if render is not None:
        render(*args)
