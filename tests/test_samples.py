"""Samples are typed artifacts (text, image, audio, table): every sink renders them by type, so a new
modality's samples need no change in the core."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import pytest
from PIL import Image

from loraplug import Artifact, Sample
from loraplug.pipeline import write_samples
from loraplug.report import write_report
from loraplug.training.sinks import Sinks, TensorBoardSink


class TextOnlySink:
    """A sink written before samples were typed: text and images only."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.images: list[Path] = []

    def log(self, step: int, metrics: dict[str, float], *, split: str) -> None: ...

    def log_text(self, step: int, name: str, text: str) -> None:
        self.texts.append(text)

    def log_image(self, step: int, name: str, path: Path) -> None:
        self.images.append(path)

    def close(self, status: str) -> None: ...


def tone(path: Path, frames: int = 800) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(b"\x00\x10" * frames)
    return path


def test_audio_and_table_samples_reach_tensorboard_the_report_and_older_sinks(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    (run_dir / "samples").mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"status": "finished", "step": 3}))
    image = run_dir / "samples" / "grid.png"
    Image.new("RGB", (4, 4), (0, 120, 0)).save(image)
    rows = [{"label": "rain", "p": 0.75}, {"label": "sun", "p": 0.25}]
    samples = [
        Sample(prompt="draw it", image_path=image),  # the shorthand existing plugins use
        Sample(
            prompt="say it",
            artifacts=[Artifact("audio", tone(run_dir / "samples" / "say.wav"), caption="8 kHz")],
        ),
        Sample(prompt="score it", text="rain", artifacts=[Artifact("table", rows)]),
    ]
    board, older = TensorBoardSink(run_dir / "tb"), TextOnlySink()
    sinks = Sinks([board, older])
    write_samples(run_dir, 3, samples, sinks)
    sinks.close("finished")

    # samples/step-N.json: every output with its type (files relative to the run directory)
    written = json.loads((run_dir / "samples" / "step-000003.json").read_text())
    assert written[1]["outputs"] == [{"type": "audio", "path": "samples/say.wav", "caption": "8 kHz"}]
    assert written[2]["outputs"] == [{"type": "text", "text": "rain"}, {"type": "table", "rows": rows}]
    assert written[0]["image"] == "samples/grid.png"  # the keys readers of older runs know stay

    # TensorBoard: images as images, audio as audio, text and tables as text
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"audio": 0, "images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert "samples/0" in tags["images"] and "samples/1" in tags["audio"]
    assert {"samples/2/text_summary"} <= set(tags["tensors"])
    audio = events.Audio("samples/1")[0]
    assert audio.step == 3 and audio.sample_rate == 8000

    # a sink without log_sample: images to log_image, everything else as Markdown text
    assert older.images == [image]
    assert "| label | p |" in older.texts[-1] and "| rain | 0.75 |" in older.texts[-1]
    assert any("(audio: " in text for text in older.texts)

    page = write_report(run_dir).read_text()
    assert '<audio controls src="samples/say.wav"></audio>' in page
    assert "<td>rain</td><td>0.75</td>" in page and '<img src="samples/grid.png"' in page


def test_an_artifact_of_an_unknown_type_or_value_is_refused_where_it_is_made() -> None:
    with pytest.raises(ValueError, match="not one of text, image, audio, table"):
        Artifact("video", "clip.mp4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="A table artifact's value must be a list"):
        Artifact("table", {"a": 1})


def test_the_terminal_shows_every_output_of_a_sample(tmp_path: Path) -> None:
    from io import StringIO

    from rich.console import Console

    from loraplug.cli.render import samples

    out = StringIO()
    wav = tone(tmp_path / "say.wav")
    samples(
        Console(file=out, width=200),
        [
            Sample(
                prompt="say it", artifacts=[Artifact("audio", wav), Artifact("table", [{"a": 1}, {"a": 2}])]
            )
        ],
    )
    text = out.getvalue()
    assert "say it" in text and "say.wav" in text and "(a table of 2 rows)" in text and "None" not in text


class TextLog:
    """A sink written before samples were typed that shows text only: no ``log_image``, no ``log_sample``."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def log(self, step: int, metrics: dict[str, float], *, split: str) -> None: ...

    def log_text(self, step: int, name: str, text: str) -> None:
        self.texts.append(text)

    def close(self, status: str) -> None: ...


class SampleLog:
    """A sink as MetricSink declares it: ``log``, ``log_sample`` and ``close``, nothing else."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str, str]] = []

    def log(self, step: int, metrics: dict[str, float], *, split: str) -> None: ...

    def log_sample(self, step: int, name: str, prompt: str, artifact: Artifact) -> None:
        self.seen.append((step, name, artifact.type))

    def close(self, status: str) -> None: ...


def test_a_sink_renders_what_it_can_and_needs_no_stubs_for_the_rest(tmp_path: Path) -> None:
    """log_text and log_image are optional: a sink with log_sample needs neither, and an older sink
    with log_text alone gets the text while an image passes it by."""
    image = tmp_path / "grid.png"
    Image.new("RGB", (4, 4), (0, 120, 0)).save(image)
    samples = [Sample(prompt="draw it", image_path=image), Sample(prompt="say it", text="rain")]
    typed, older = SampleLog(), TextLog()
    sinks = Sinks([typed, older])
    write_samples(tmp_path, 2, samples, sinks)
    sinks.close("finished")
    assert typed.seen == [(2, "samples/0", "image"), (2, "samples/1", "text")]
    assert older.texts == ["**say it**\n\nrain"]
