"""loraplug-wandb logs what metrics.jsonl holds, the resolved recipe and the samples to a W&B run.

Every test runs wandb for real in offline mode and reads the offline run back with wandb's own
transaction-log reader (`wandb leet inspect --json`), not through a mock.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from loraplug import Artifact, LoraplugError
from loraplug.context import RunContext
from loraplug.plugins import PluginHost
from loraplug.recipe import load_recipe
from loraplug.testing import run_cli
from loraplug_wandb import plugin
from loraplug_wandb.sink import RUN_ID_FILE, TEXT_KEY


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)


def offline_run(wandb_dir: Path) -> Path:
    runs = sorted(wandb_dir.glob("offline-run-*"))
    assert runs, f"no offline W&B run in {wandb_dir}"
    return runs[-1]


def inspect(run: Path, *, summary: bool = False) -> Any:
    """The run's records (or its summary) as wandb's reader of .wandb files prints them."""
    args = [
        sys.executable,
        "-m",
        "wandb",
        "leet",
        "inspect",
        "--json",
        *(["--summary"] if summary else []),
        str(run),
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)
    return (
        json.loads(proc.stdout)
        if summary
        else [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    )


def history(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r["history"]["item"] for r in records if r["type"] == "history"]


def test_a_run_logs_the_same_scalars_the_recipe_and_the_sample_texts(
    tmp_path: Path, lm_recipe, monkeypatch
) -> None:
    monkeypatch.setenv("LORAPLUG_WANDB", "1")
    recipe = lm_recipe(
        train={"max_steps": 4}, eval={"every_n_steps": 2, "sample_prompts": ["q: rain", "q: sun"]}, export=[]
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny"
    run = offline_run(run_dir / "wandb")
    records = inspect(run)

    # Every scalar of metrics.jsonl, under split/name at its step.
    logged = {
        (row["step"], key): value
        for row in history(records)
        for key, value in row.items()
        if key.startswith(("train/", "eval/"))
    }
    expected = {
        (line["step"], f"{line['split']}/{key}"): value
        for line in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        for key, value in line.items()
        if key not in ("step", "split", "time")
    }
    assert expected and logged == pytest.approx(expected)
    assert {key for _, key in expected} >= {"train/loss", "train/lr", "eval/val_loss"}

    # The resolved recipe as the run's config.
    summary = inspect(run, summary=True)
    assert summary["config"] == json.loads(json.dumps(tomllib.loads((run_dir / "recipe.toml").read_text())))
    assert summary["exit_code"] == 0 and summary["name"] == "tiny"
    assert summary["run_id"] == (run_dir / RUN_ID_FILE).read_text().strip()

    # The sample texts, before and after training: one increment of the table per sampled step.
    increments = [row[f"{TEXT_KEY}.path"] for row in history(records) if f"{TEXT_KEY}.path" in row]
    assert len(increments) == 2
    rows = [row for path in increments for row in json.loads((run / "files" / path).read_text())["data"]]
    texts = {(step, name): text for step, name, text in rows}
    for sample_file in sorted((run_dir / "samples").glob("step-*.json")):
        step = int(sample_file.stem.removeprefix("step-"))
        for index, sample in enumerate(json.loads(sample_file.read_text())):
            assert texts[(step, f"samples/{index}")] == f"**{sample['prompt']}**\n\n{sample['text']}"
    assert {step for step, _ in texts} == {0, 4}


def test_images_and_a_failed_status_reach_the_run(tmp_path: Path, lm_recipe, monkeypatch) -> None:
    monkeypatch.setenv("LORAPLUG_WANDB", "1")
    ctx = run_context(tmp_path, lm_recipe())
    image = tmp_path / "grid.png"
    Image.new("RGB", (8, 6), (200, 30, 30)).save(image)

    sink = plugin.loraplug_metric_sinks(ctx)
    assert sink is not None
    sink.log_image(3, "samples/0", image)
    sink.log(3, {"loss": 2.5}, split="train")
    sink.close("failed")

    run = offline_run(ctx.run_dir / "wandb")
    rows = history(inspect(run))
    logged = next(row for row in rows if "samples/0._type" in row)
    assert logged["samples/0._type"] == "image-file" and logged["step"] == 3
    assert (logged["samples/0.width"], logged["samples/0.height"]) == (8, 6)
    assert (run / "files" / logged["samples/0.path"]).is_file()
    assert any(row.get("train/loss") == 2.5 for row in rows)
    assert inspect(run, summary=True)["exit_code"] == 1


def test_audio_and_table_samples_reach_the_run_as_their_own_media(
    tmp_path: Path, lm_recipe, monkeypatch
) -> None:
    import wave

    monkeypatch.setenv("LORAPLUG_WANDB", "1")
    ctx = run_context(tmp_path, lm_recipe())
    sound = tmp_path / "tone.wav"
    with wave.open(str(sound), "wb") as wav:
        wav.setnchannels(1), wav.setsampwidth(2), wav.setframerate(8000)
        wav.writeframes(bytes(1600))
    sink = plugin.loraplug_metric_sinks(ctx)
    assert sink is not None
    sink.log_sample(2, "samples/0", "say hi", Artifact("audio", sound))
    sink.log_sample(
        2,
        "samples/1",
        "score it",
        Artifact("table", [{"label": "rain", "p": 0.75}, {"label": "sun", "p": 0.25}]),
    )
    sink.close("finished")

    rows = history(inspect(offline_run(ctx.run_dir / "wandb")))
    audio = next(row for row in rows if "samples/0._type" in row)
    assert audio["samples/0._type"] == "audio-file" and audio["step"] == 2
    table = next(row for row in rows if "samples/1._type" in row)
    assert table["samples/1._type"] == "table-file" and table["samples/1.nrows"] == 2


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path: Path, lm_recipe, monkeypatch) -> None:
    monkeypatch.setenv("LORAPLUG_WANDB", "1")
    ctx = run_context(tmp_path, lm_recipe())
    for status in ("interrupted", "finished"):
        sink = plugin.loraplug_metric_sinks(ctx)
        assert sink is not None
        sink.log(1, {"loss": 1.0}, split="train")
        sink.close(status)
    runs = sorted((ctx.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    ids = {inspect(run, summary=True)["run_id"] for run in runs}
    assert ids == {(ctx.run_dir / RUN_ID_FILE).read_text().strip()}


def test_off_unless_asked(tmp_path: Path, lm_recipe, monkeypatch) -> None:
    ctx = run_context(tmp_path, lm_recipe())
    monkeypatch.delenv("LORAPLUG_WANDB", raising=False)
    assert plugin.loraplug_metric_sinks(ctx) is None
    monkeypatch.setenv("LORAPLUG_WANDB", "0")
    assert plugin.loraplug_metric_sinks(ctx) is None
    monkeypatch.setenv("LORAPLUG_WANDB", "sometimes")
    with pytest.raises(LoraplugError, match="LORAPLUG_WANDB='sometimes'"):
        plugin.loraplug_metric_sinks(ctx)
    assert not (ctx.run_dir / "wandb").exists()


def run_context(tmp_path: Path, recipe_path: Path) -> RunContext:
    recipe = load_recipe(recipe_path, PluginHost.load())
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    return RunContext(recipe=recipe, run_dir=run_dir, cache_dir=tmp_path / "cache")
