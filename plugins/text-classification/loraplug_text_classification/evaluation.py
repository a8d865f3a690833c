"""The metric kinds: accuracy, macro-F1 and per-class scores on the validation split, and what
``report.html`` shows of them — the confusion matrix drawn, and the per-class table.

Imported by the ``loraplug_evaluate`` hook body only (it imports torch and matplotlib when called).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loraplug import Artifact, DataBundle, LoraplugError, ModelBundle, RunContext
from loraplug.toolkit import EVALUATION_DIR, atomic_write_bytes, show_in_report
from loraplug_text_classification.labels import label_index
from loraplug_text_classification.model import labels_of, logits
from loraplug_text_classification.options import SequenceClassifierOptions
from loraplug_text_classification.scores import ClassScores, accuracy, confusion, macro_f1, per_class

#: The report's headings for the two figures every evaluation of these metrics shows.
CONFUSION_HEADING, TABLE_HEADING = "confusion matrix", "per-class scores"


def evaluate(
    metrics: list[str],
    model: ModelBundle,
    options: SequenceClassifierOptions,
    data: DataBundle,
    ctx: RunContext,
) -> dict[str, float]:
    """The requested scores on ``data.val``; the confusion matrix and per-class table go to the report."""
    if not data.val:
        raise LoraplugError(
            f"The metrics {', '.join(metrics)} need validation samples",
            where="eval.metrics",
            fix="Set data.val_fraction or data.val_path",
        )
    labels = labels_of(model)
    truth = [label_index(record, labels) for record in data.val]
    predicted = logits(model, [r["text"] for r in data.val], options.max_length).argmax(dim=-1).tolist()
    matrix = confusion(truth, predicted, len(labels))
    classes = per_class(matrix, labels)
    found: dict[str, float] = {}
    if "accuracy" in metrics:
        found["accuracy"] = accuracy(matrix)
    if "macro_f1" in metrics:
        found["macro_f1"] = macro_f1(classes)
    if "per_class" in metrics:
        for scores in classes:
            found |= {
                f"{name}/{scores.label}": getattr(scores, name) for name in ("precision", "recall", "f1")
            }
    if ctx.is_main_process:
        show(ctx.run_dir, matrix, labels, classes)
    return found


def show(
    run_dir: Path, matrix: list[list[int]], labels: Sequence[str], classes: Sequence[ClassScores]
) -> None:
    """The latest evaluation in report.html: the confusion matrix as a picture, the per-class scores as a table."""
    image = run_dir / EVALUATION_DIR / "confusion_matrix.png"
    atomic_write_bytes(image, draw_confusion(matrix, labels))
    total = sum(map(sum, matrix))
    show_in_report(
        run_dir,
        CONFUSION_HEADING,
        [Artifact("image", image, caption=f"{total} validation texts; rows: true label, columns: predicted")],
    )
    rows: list[dict[str, Any]] = [
        {
            "label": s.label,
            "precision": round(s.precision, 4),
            "recall": round(s.recall, 4),
            "f1": round(s.f1, 4),
            "support": s.support,
        }
        for s in classes
    ]
    rows.append(
        {
            "label": "macro average",
            "precision": "",
            "recall": "",
            "f1": round(macro_f1(classes), 4),
            "support": total,
        }
    )
    show_in_report(run_dir, TABLE_HEADING, [Artifact("table", rows)])


def draw_confusion(matrix: list[list[int]], labels: Sequence[str]) -> bytes:
    """The confusion matrix as a PNG: a heat map with each cell's count (matplotlib's Agg canvas, no pyplot)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    size = 1.6 + 0.5 * len(labels)
    figure = Figure(figsize=(size + 1.2, size), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    shown = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(shown, ax=axes)
    ticks = range(len(labels))
    axes.set_xticks(ticks, labels=list(labels), rotation=45, ha="right")
    axes.set_yticks(ticks, labels=list(labels))
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    high = max((max(row) for row in matrix), default=0)
    for t, row in enumerate(matrix):
        for p, count in enumerate(row):
            axes.text(
                p, t, str(count), ha="center", va="center", color="white" if count > high / 2 else "black"
            )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
