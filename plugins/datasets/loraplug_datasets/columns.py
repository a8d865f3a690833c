"""A local dataset's column names, read cheaply (a file's schema or first line) so ``recipe check`` can
name a missing column before anything loads. pyarrow is imported only for parquet and arrow files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

#: The ``datasets`` builder that reads each file suffix.
BUILDERS = {
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".tsv": "csv",
}
#: The files ``datasets.save_to_disk`` writes: such a directory is read with ``load_from_disk``.
SAVED_DATASET = "dataset_info.json"
SAVED_DATASET_DICT = "dataset_dict.json"


def builder_of(path: Path) -> str | None:
    return BUILDERS.get(path.suffix.lower())


def is_saved_dataset(directory: Path) -> bool:
    """Whether ``directory`` was written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return (directory / SAVED_DATASET_DICT).is_file() or (
        (directory / SAVED_DATASET).is_file() and (directory / "state.json").is_file()
    )


def data_files(directory: Path) -> list[Path]:
    """The files under ``directory`` a ``datasets`` builder reads, in name order."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and builder_of(p) is not None)


def _saved_columns(directory: Path, split: str) -> list[str] | None:
    info = (
        directory / split / SAVED_DATASET
        if (directory / SAVED_DATASET_DICT).is_file()
        else directory / SAVED_DATASET
    )
    features = json.loads(info.read_text(encoding="utf-8")).get("features")
    return list(features) if isinstance(features, dict) else None


def _file_columns(path: Path) -> list[str] | None:
    builder = builder_of(path)
    if builder == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    if builder == "arrow":
        import pyarrow as pa

        with pa.memory_map(str(path)) as source:
            try:
                return list(pa.ipc.open_stream(source).schema.names)  # what datasets writes
            except pa.ArrowInvalid:
                source.seek(0)
                return list(pa.ipc.open_file(source).schema.names)
    if builder == "csv":
        with path.open(encoding="utf-8", newline="") as handle:
            header = next(csv.reader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ","), None)
        return header
    if builder == "json":
        with path.open(encoding="utf-8-sig") as handle:
            for line in handle:
                if line.strip():
                    first = json.loads(line)
                    # A JSON array or an object of columns: its keys are not the columns; left to loading.
                    return list(first) if isinstance(first, dict) and line.lstrip().startswith("{") else None
    return None


class Unreadable(ValueError):
    """A parquet or arrow file whose schema cannot be read: damaged, or not what its suffix says."""


def local_columns(path: Path, split: str) -> list[str] | None:
    """The columns of the local dataset at ``path`` (its ``split`` where it has several), or ``None`` when they
    cannot be told without loading it (then loading checks them).

    :raises Unreadable: a parquet or arrow file has no schema to read (a damaged or mislabelled file).
    """
    if path.is_dir():
        if is_saved_dataset(path):
            try:
                return _saved_columns(path, split)
            except (OSError, ValueError):
                return None
        files = data_files(path)
        named = [f for f in files if split in f.stem] or files
        if not named:
            return None
        path = named[0]
    try:
        return _file_columns(path)
    except (OSError, ValueError) as exc:
        if builder_of(path) in ("parquet", "arrow"):
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise Unreadable(f"{path} cannot be read as {builder_of(path)}: {first}") from exc
        return None  # a JSON or CSV file: loading it says what is wrong, with the line
