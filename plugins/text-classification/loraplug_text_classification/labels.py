"""The class names: named in ``model.labels`` or read from the data, and every sample checked against them."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from loraplug import LoraplugError, Record
from loraplug_text_classification.options import LabelledDataOptions, SequenceClassifierOptions


def _local_files(data: BaseModel) -> LabelledDataOptions | None:
    """The options of a data kind of this plugin whose files are all on this machine, else None."""
    if isinstance(data, LabelledDataOptions) and all(path.is_file() for path in data.files()):
        return data
    return None


def data_labels(data: LabelledDataOptions) -> list[str]:
    """Every label in the data's files, sorted: the classifier's outputs when ``model.labels`` is unset."""
    from loraplug_text_classification.data import read_rows

    found = {record["label"] for path in data.files() for record in read_rows(path, data)}
    return sorted(found)


def resolve_labels(options: SequenceClassifierOptions, data_kind: str, data: BaseModel) -> list[str]:
    """``model.labels``, or the labels of the data's local files; an error when neither can be had."""
    if options.labels is not None:
        return list(options.labels)
    local = _local_files(data)
    if local is None:
        raise LoraplugError(
            f"model.labels is not set, and the labels cannot be read from data.kind {data_kind!r}",
            where="model.labels",
            fix='Name the classes in the recipe: labels = ["negative", "positive"] (in the order of the outputs)',
        )
    labels = data_labels(local)
    if len(labels) < 2:
        raise LoraplugError(
            f"The data has {len(labels)} label ({', '.join(labels)}); a classifier needs at least two",
            where=str(local.path),
            fix="Add samples of the other classes",
        )
    return labels


def check_recipe_labels(options: SequenceClassifierOptions, data_kind: str, data: BaseModel) -> list[str]:
    """The problems ``recipe check`` reports: a sample whose label is not in ``model.labels`` (the first
    one, by file and line), a malformed file, or labels that cannot be known at all."""
    from loraplug_text_classification.data import read_rows

    local = _local_files(data)
    if local is None:
        if options.labels is None and not isinstance(data, LabelledDataOptions):
            return [
                f"`model.labels` is not set and data.kind {data_kind!r} is not one whose labels the "
                "sequence-classifier reads itself (labelled-jsonl, labelled-csv): name the classes in model.labels"
            ]
        return []  # files not here yet (a finished run re-read): checked when the run loads them
    try:
        if options.labels is None:
            resolve_labels(options, data_kind, local)
            return []
        known = set(options.labels)
        for path in local.files():
            for record in read_rows(path, local):
                if record["label"] not in known:
                    line = record["id"].rpartition(":")[2]
                    return [
                        f"{path.name} line {line} has the label {record['label']!r}, which is not in model.labels "
                        f"({', '.join(options.labels)}) ({path}:{line}); add it to model.labels or correct the line"
                    ]
    except LoraplugError as exc:
        return [exc.paragraph()]
    return []


def label_index(record: Record, labels: Sequence[str]) -> int:
    """The output index of ``record``'s label; a label the classifier lacks is an error naming the sample."""
    label = record.get("label")
    name = str(label) if isinstance(label, int) and not isinstance(label, bool) else label
    if isinstance(name, str) and name in labels:
        return labels.index(name)
    raise LoraplugError(
        f"Sample {record.get('id')} has the label {label!r}, which is not one of the classifier's labels "
        f"({', '.join(labels)})",
        where=str(record.get("id")),
        fix="Add it to model.labels, or correct the sample",
    )
