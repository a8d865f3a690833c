"""Sampling weights per training record, from ``data.balance_by`` or ``data.weight_by``.

``balance_by = "label"`` gives each record ``1 / (records with its label)``, so every class carries
the same total weight and is drawn equally often; ``weight_by = "w"`` uses the record's own number.
The training loop draws micro-batches with these weights (``loraplug.training.batches``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from loraplug.bundles import Record
from loraplug.data.filters import sample_id
from loraplug.data.options import DataCoreOptions
from loraplug.errors import LoraplugError

SHOWN_CLASSES = 12


def _label(record: Record, key: str) -> Any:
    if key not in record:
        raise LoraplugError(
            f"Sample {sample_id(record)} has no field {key!r}, which data.balance_by names",
            where=sample_id(record),
            fix=f"Give every sample a {key!r} field, or set data.balance_by to a field the samples have "
            f"(this one has: {', '.join(sorted(k for k in record if k != 'id'))})",
        )
    value = record[key]
    if not isinstance(value, (str, int, bool)) and value is not None:
        raise LoraplugError(
            f"Sample {sample_id(record)} has {key} = {value!r}; a class label must be a string or an integer",
            where=sample_id(record),
            fix="Use one label per sample",
        )
    return value


def _weight(record: Record, key: str) -> float:
    value = record.get(key)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise LoraplugError(
            f"Sample {sample_id(record)} has {key} = {value!r}; data.weight_by needs a finite number ≥ 0 in every sample",
            where=sample_id(record),
            fix=f"Give every sample a numeric {key!r} field",
        )
    return float(value)


def record_weights(
    records: Sequence[Record], options: DataCoreOptions
) -> tuple[list[float], dict[str, Any]] | None:
    """Per-record drawing weights and a summary for the report, or ``None`` without balancing."""
    if options.balance_by is not None:
        labels = [_label(r, options.balance_by) for r in records]
        counts = Counter(labels)
        weights = [1.0 / counts[label] for label in labels]
        shown = dict(counts.most_common(SHOWN_CLASSES))
        summary = {
            "balance_by": options.balance_by,
            "classes": {str(k): v for k, v in shown.items()},
            "each class drawn": f"{1 / len(counts):.1%} of the time ({len(counts)} classes)",
        }
        return weights, summary
    if options.weight_by is not None:
        weights = [_weight(r, options.weight_by) for r in records]
        total = sum(weights)
        if total <= 0:
            raise LoraplugError(
                f"Every sample's {options.weight_by!r} is 0, so no sample can be drawn",
                fix=f"Give some samples a positive {options.weight_by!r}",
            )
        return weights, {
            "weight_by": options.weight_by,
            "min": min(weights),
            "max": max(weights),
            "zero-weight samples": weights.count(0.0),
        }
    return None
