"""What a plugin shows of an evaluation in report.html (``loraplug.toolkit.show_in_report``)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from loraplug import Artifact
from loraplug.report import write_report
from loraplug.toolkit import EVALUATION_DIR, show_in_report


def _run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"status": "finished", "step": 4}))
    return run_dir


def test_evaluation_figures_and_tables_appear_in_the_report_and_the_latest_replaces_the_last(
    tmp_path: Path,
) -> None:
    run_dir = _run_dir(tmp_path)
    image = run_dir / EVALUATION_DIR / "matrix.png"
    image.parent.mkdir()
    Image.new("RGB", (4, 4)).save(image)
    show_in_report(run_dir, "confusion matrix", [Artifact("image", image, caption="rows: true")])
    show_in_report(run_dir, "per-class scores", [Artifact("table", [{"label": "rain", "f1": 0.5}])])
    show_in_report(run_dir, "per-class scores", [Artifact("table", [{"label": "rain", "f1": 0.75}])])

    page = write_report(run_dir).read_text()
    evaluation = page[page.index("<h2>Evaluation</h2>") : page.index("<h2>Samples</h2>")]
    assert (
        '<h3>confusion matrix</h3>\n<a href="evaluation/matrix.png"><img src="evaluation/matrix.png"'
        in evaluation
    )
    assert "rows: true" in evaluation
    assert "<td>rain</td><td>0.75</td>" in evaluation and "0.5<" not in evaluation


def test_a_report_without_evaluation_figures_has_no_such_section_and_survives_a_torn_file(
    tmp_path: Path,
) -> None:
    run_dir = _run_dir(tmp_path)
    assert "<h2>Evaluation</h2>" not in write_report(run_dir).read_text()
    (run_dir / EVALUATION_DIR).mkdir()
    (run_dir / EVALUATION_DIR / "torn.json").write_text('{"name": "x", "outp')
    assert "<h2>Evaluation</h2>" not in write_report(run_dir).read_text()
