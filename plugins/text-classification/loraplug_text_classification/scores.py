"""Classification scores from true and predicted label indices: pure Python, no torch.

Conventions are scikit-learn's with ``zero_division=0``: a class never predicted has precision 0, a
class absent from the truth has recall 0, and F1 is 0 where precision + recall is 0. Macro-F1 is the
unweighted mean of every label's F1, so a rare class counts as much as a common one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ClassScores:
    """One label's precision, recall, F1 and support (how many true samples it has)."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int


def confusion(truth: Sequence[int], predicted: Sequence[int], classes: int) -> list[list[int]]:
    """``matrix[t][p]``: how many samples of true class ``t`` were predicted as ``p``."""
    matrix = [[0] * classes for _ in range(classes)]
    for t, p in zip(truth, predicted, strict=True):
        matrix[t][p] += 1
    return matrix


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def per_class(matrix: list[list[int]], labels: Sequence[str]) -> list[ClassScores]:
    """Each label's scores from a confusion matrix."""
    scores = []
    for i, label in enumerate(labels):
        right = matrix[i][i]
        precision = _ratio(right, sum(row[i] for row in matrix))
        recall = _ratio(right, sum(matrix[i]))
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores.append(ClassScores(label, precision, recall, f1, sum(matrix[i])))
    return scores


def accuracy(matrix: list[list[int]]) -> float:
    return _ratio(sum(matrix[i][i] for i in range(len(matrix))), sum(map(sum, matrix)))


def macro_f1(scores: Sequence[ClassScores]) -> float:
    return sum(s.f1 for s in scores) / len(scores) if scores else 0.0
