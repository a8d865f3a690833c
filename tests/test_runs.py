"""`loraplug runs list/show` and the run report, on real tiny runs of the toy regressor."""

from __future__ import annotations

import html
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from PIL import Image

from loraplug.report import plan_plots, write_report_or_warn
from loraplug.testing import plugins_installed, run_cli, toy_recipe

# matplotlib's first two colours: training loss, then validation loss on the loss plot.
BLUE, ORANGE = (31, 119, 180), (255, 127, 14)

pytestmark = pytest.mark.usefixtures("toy")  # the toy plugin installed for every test (tests/conftest.py)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, toy_site: Path) -> Path:
    """One real run shared by the tests that only read it (or copy it first): 4 steps, samples, an export."""
    root = tmp_path_factory.mktemp("finished")
    recipe = toy_recipe(
        root,
        eval={
            "every_n_steps": 2,
            "sample_every_n_steps": 2,
            "sample_prompts": ["0.5, -1, 2", "<0.5> & -1, 2"],
        },
        export=[{"kind": "toy-weights"}],
    )
    with plugins_installed(toy_site):
        result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    return root / "runs" / "tiny"


class Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append({k: v or "" for k, v in attrs})


def report_images(page: Path) -> list[dict[str, str]]:
    parser = Images()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.images


def metric_names(run_dir: Path) -> set[str]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        f"{line['split']}/{key}" for line in lines for key in line if key not in ("step", "split", "time")
    }


def pixels_near(path: Path, colour: tuple[int, int, int]) -> int:
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        return sum(
            1 for pixel in rgb.getdata() if all(abs(a - b) < 40 for a, b in zip(pixel, colour, strict=True))
        )


def test_a_finished_run_has_a_report_with_a_plot_of_every_metric(finished_run: Path) -> None:
    page = finished_run / "report.html"
    text = page.read_text(encoding="utf-8")
    assert 'class="status finished"' in text

    plots = {
        image["alt"]: finished_run / image["src"]
        for image in report_images(page)
        if image["src"].startswith("report/")
    }
    # Every metric of metrics.jsonl is in a plot; training and validation loss share one.
    assert {name for alt in plots for name in alt.split(", ")} == metric_names(finished_run)
    assert {"train/loss", "train/lr", "eval/val_loss"} <= metric_names(finished_run)
    for alt, path in plots.items():
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 300, alt
        assert pixels_near(path, BLUE) > 100, f"{path.name} has no line drawn"
    assert pixels_near(plots["train/loss, eval/val_loss"], ORANGE) > 100

    # Samples (escaped), the data summary, the export with its manifest.
    for sample_file in (finished_run / "samples").glob("step-*.json"):
        for sample in json.loads(sample_file.read_text()):
            assert html.escape(sample["prompt"]) in text and html.escape(sample["text"]) in text
    assert "before training" in text and "step 2" in text and "step 4" in text
    assert "&lt;0.5&gt; &amp; -1, 2" in text
    assert "train samples" in text
    manifest = json.loads((finished_run / "exports" / "toy-weights" / "export.json").read_text())
    assert 'href="exports/toy-weights/export.json"' in text
    assert all(f["path"] in text and f["sha256"][:16] in text for f in manifest["files"])


def test_runs_show_prints_the_run_and_rewrites_the_report_with_new_metrics(
    tmp_path: Path, finished_run: Path
) -> None:
    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "report.html").unlink()
    shutil.rmtree(run_dir / "report")
    # Metrics a plugin's evaluation adds are plotted too, whatever their names.
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as metrics:
        metrics.write(json.dumps({"step": 4, "split": "eval", "bleu": 12.5, "chrf/char": 30.0}) + "\n")
        metrics.write('{"step": 5, "split": "train", "loss": 1.')  # torn by a crash: skipped
    # Image samples as an image model's plugin leaves them: paths relative to the run directory.
    Image.new("RGB", (16, 16), (0, 128, 0)).save(run_dir / "samples" / "grid 1.png")
    images = [
        {"prompt": "a cat", "text": None, "image": "samples/grid 1.png"},
        {"prompt": "a dog", "text": None, "image": "samples/gone.png"},
    ]
    (run_dir / "samples" / "step-000006.json").write_text(json.dumps(images))

    result = run_cli("runs", "show", run_dir)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "finished" in out and "step 4/4" in out
    assert "train samples" in out
    assert "val_loss" in out and "bleu" in out and "12.5" in out
    assert "toy-weights" in out and "safetensors.torch.load_file" in out
    assert str(run_dir / "report.html") in out

    alts = {image["alt"]: run_dir / unquote(image["src"]) for image in report_images(run_dir / "report.html")}
    assert {"eval/bleu", "eval/chrf/char"} <= set(alts)
    assert all(path.is_file() for path in alts.values())
    page = (run_dir / "report.html").read_text()
    assert 'src="samples/grid%201.png"' in page and "step 6" in page
    assert "samples/gone.png is missing" in page
    assert not list(run_dir.glob(".report*")), "no temporary files are left behind"


def test_runs_list_shows_finished_and_failed_runs_and_smoke_runs(
    tmp_path: Path, finished_run: Path, toy_recipe_file, jsonl_file
) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(finished_run, runs / "tiny")
    shutil.copytree(finished_run, runs / "smoke" / "tiny")
    empty = jsonl_file("empty.jsonl", [])
    failed = run_cli("run", toy_recipe_file(run={"name": "broken"}, data={"path": str(empty)}, export=[]))
    assert failed.exit_code == 2

    listed = run_cli("runs", "list", "--json")  # ./runs by default
    assert listed.exit_code == 0, listed.output
    by_path = {Path(r["path"]).relative_to(runs).as_posix(): r for r in json.loads(listed.stdout)}
    assert set(by_path) == {"tiny", "smoke/tiny", "broken"}
    assert (
        by_path["tiny"]["status"] == "finished"
        and by_path["tiny"]["step"] == 4
        and by_path["tiny"]["total_steps"] == 4
    )
    val_losses = [
        json.loads(row)["val_loss"]
        for row in (finished_run / "metrics.jsonl").read_text().splitlines()
        if "val_loss" in row
    ]
    assert by_path["tiny"]["best"]["metric"] == "val_loss" and by_path["tiny"]["best"]["value"] == min(
        val_losses
    )
    assert by_path["broken"]["status"] == "failed" and by_path["broken"]["best"] is None

    table = run_cli("runs", "list", runs)
    assert table.exit_code == 0, table.output
    rows = {line.split("│")[1].strip(): line for line in table.stdout.splitlines() if line.count("│") > 3}
    assert "finished" in rows["tiny"] and "4/4" in rows["tiny"] and "val_loss" in rows["tiny"]
    assert "failed" in rows["broken"] and "finished" in rows["smoke/tiny"]

    # The failed run has a report too, saying why it failed.
    report = (runs / "broken" / "report.html").read_text()
    assert 'class="status failed"' in report and "No training samples" in report


def test_a_killed_run_is_listed_as_interrupted(tmp_path: Path, toy_recipe_file) -> None:
    recipe = toy_recipe_file(
        train={"max_steps": 10_000, "log_every_n_steps": 1}, eval={"sample_prompts": []}, export=[]
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "loraplug", "run", str(recipe)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "runs" / "tiny" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 300
        while '"split": "train"' not in (metrics.read_text() if metrics.exists() else ""):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the run logged no step in time"
            time.sleep(0.5)
        assert status_of("runs") == "running"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert status_of("runs") == "interrupted"
    shown = run_cli("runs", "show", tmp_path / "runs" / "tiny")
    assert shown.exit_code == 0 and "interrupted" in shown.stdout
    assert 'class="status interrupted"' in (tmp_path / "runs" / "tiny" / "report.html").read_text()


def status_of(directory: str) -> Any:
    listed = run_cli("runs", "list", directory, "--json")
    assert listed.exit_code == 0, listed.output
    (run,) = json.loads(listed.stdout)
    return run["status"]


def test_runs_show_on_a_directory_that_holds_no_run_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    result = run_cli("runs", "show", tmp_path / "notes")
    assert result.exit_code == 2
    assert "is not a loraplug run directory" in result.stderr and "runs list" in result.stderr
    assert "Traceback" not in result.output

    missing = run_cli("runs", "show", tmp_path / "nowhere")
    assert missing.exit_code == 2 and "does not exist" in missing.stderr


def test_runs_list_of_an_empty_directory_says_so(tmp_path: Path) -> None:
    result = run_cli("runs", "list", tmp_path)
    assert result.exit_code == 0 and "No runs in" in result.stdout
    assert json.loads(run_cli("runs", "list", tmp_path, "--json").stdout) == []


def test_a_report_that_cannot_be_written_is_a_warning(tmp_path: Path) -> None:
    warnings: list[str] = []
    assert write_report_or_warn(tmp_path / "gone", warnings.append) is None
    assert (
        len(warnings) == 1 and "could not write the run report" in warnings[0] and "runs show" in warnings[0]
    )


def test_metrics_whose_names_clash_as_file_names_get_plots_of_their_own() -> None:
    series = {
        ("train", "loss"): [(1, 1.0)],
        ("eval", "a/b"): [(1, 1.0)],
        ("eval", "a_b"): [(1, 2.0)],
        ("eval", "a b"): [(1, 3.0)],
    }
    plots = plan_plots(series)
    assert len({plot.file for plot in plots}) == len(plots) == 4
    assert sorted(key for plot in plots for key in plot.series) == sorted(series)


def test_each_sample_step_is_logged_once(finished_run: Path) -> None:
    # sample_every_n_steps = 2 divides the 4 steps: the last periodic samples are the final ones and
    # must not be generated and logged a second time.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(finished_run / "tb"), size_guidance={"tensors": 0})
    board.Reload()
    steps = [event.step for event in board.Tensors("samples/0/text_summary")]
    assert steps == [0, 2, 4]


@pytest.mark.parametrize("damage", ["truncated", "zero-byte"])
def test_a_damaged_adapter_is_a_clear_error_for_runs_show_export_and_generate(
    tmp_path: Path, finished_run: Path, damage: str
) -> None:
    run_dir = tmp_path / "runs" / "tiny"
    shutil.copytree(finished_run, run_dir)
    adapter = run_dir / "adapter" / "adapter.safetensors"
    adapter.write_bytes(adapter.read_bytes()[: adapter.stat().st_size // 2] if damage == "truncated" else b"")
    said = "is cut short" if damage == "truncated" else "is empty (0 bytes)"

    shown = run_cli("runs", "show", run_dir)
    assert shown.exit_code == 2, shown.output
    first = shown.stdout.splitlines()[0]
    assert "damaged" in first and "finished" not in first
    assert f"adapter/adapter.safetensors {said}" in shown.stdout
    assert f"The trained weights adapter.safetensors {said}" in shown.stderr and str(adapter) in shown.stderr
    assert 'class="status damaged"' in (run_dir / "report.html").read_text()
    listed = json.loads(run_cli("runs", "list", tmp_path / "runs", "--json").stdout)
    assert [r["status"] for r in listed] == ["damaged"] and listed[0]["problem"].startswith(
        f"adapter/adapter.safetensors {said}"
    )

    for command in (
        ("export", run_dir, "--kind", "toy-weights", "--name", "again"),
        ("generate", run_dir, "--prompt", "0.5, -1, 2"),
    ):
        result = run_cli(*command)
        assert result.exit_code == 2, result.output
        assert (
            f"The trained weights adapter.safetensors {said}" in result.stderr
            and "adapter.safetensors." in result.stderr
        )
        assert "unexpected error" not in result.output and "Traceback" not in result.output
    assert not (run_dir / "exports" / "again").exists()


def test_an_unreadable_run_json_is_listed_and_hides_no_other_run(tmp_path: Path, finished_run: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(finished_run, runs / "good")
    shutil.copytree(finished_run, runs / "torn")
    (runs / "torn" / "run.json").write_text('{"status": "fini')
    shutil.copytree(finished_run, runs / "odd")
    (runs / "odd" / "run.json").write_text("[1, 2]")

    table = run_cli("runs", "list", runs)
    assert table.exit_code == 0, table.output
    rows = {line.split("│")[1].strip(): line for line in table.stdout.splitlines() if line.count("│") > 3}
    assert "finished" in rows["good"] and "unreadable" in rows["torn"] and "unreadable" in rows["odd"]
    assert "run.json is not valid JSON" in table.stdout
    listed = {Path(r["path"]).name: r for r in json.loads(run_cli("runs", "list", runs, "--json").stdout)}
    assert listed["good"]["status"] == "finished" and listed["good"]["problem"] is None
    assert listed["torn"]["status"] == "unreadable" and "not valid JSON" in listed["torn"]["problem"]
    assert listed["odd"]["status"] == "unreadable" and "holds a JSON list" in listed["odd"]["problem"]

    shown = run_cli("runs", "show", runs / "torn")
    assert (
        shown.exit_code == 2
        and "run.json is not valid JSON" in shown.stderr
        and str(runs / "torn" / "run.json") in shown.stderr
    )


def test_runs_list_of_a_directory_that_is_not_there_is_an_error(tmp_path: Path) -> None:
    result = run_cli("runs", "list", tmp_path / "nowhere")
    assert result.exit_code == 2 and f"{tmp_path / 'nowhere'} does not exist" in result.stderr
    (tmp_path / "file").write_text("")
    assert run_cli("runs", "list", tmp_path / "file", "--json").exit_code == 2
    # No DIRECTORY and no ./runs yet: nothing ran here, which is not a mistake.
    default = run_cli("runs", "list")
    assert default.exit_code == 0 and "No runs in" in default.stdout
