"""Data kind ``imagefolder``: images with captions from same-stem text files or a metadata table.

Every image is decoded once here, so an unreadable or truncated file is found before any model loads
and is skipped and counted (or stops the run, naming it) — never a crash in the middle of an epoch.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraplug import DataBundle, LoraplugError, Record
from loraplug.toolkit import hold_out
from loraplug_diffusion.images import IMAGE_SUFFIXES, check_image
from loraplug_diffusion.options import ImageFolderOptions

METADATA_NAMES = ("metadata.jsonl", "metadata.csv")
IMAGE_COLUMNS = ("image_path", "file_name", "image", "path")
CAPTION_COLUMNS = ("caption", "text", "prompt")


@dataclass
class Tally:
    """What was skipped, for the run's data summary."""

    unreadable: list[str] = field(default_factory=list)
    missing_images: list[str] = field(default_factory=list)
    orphan_captions: list[str] = field(default_factory=list)
    empty_captions: int = 0

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.unreadable:
            out["skipped unreadable images"] = len(self.unreadable)
            out["first unreadable"] = self.unreadable[0]
        if self.missing_images:
            out["skipped rows without an image"] = len(self.missing_images)
        if self.orphan_captions:
            out["captions without an image"] = len(self.orphan_captions)
        if self.empty_captions:
            out["images without a caption"] = self.empty_captions
        return out


def find_images(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _caption_for(image: Path, options: ImageFolderOptions, tally: Tally) -> str:
    caption_file = image.with_suffix(options.caption_extension)
    if caption_file.is_file():
        try:
            return caption_file.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError as exc:
            raise LoraplugError(
                f"{caption_file} is not UTF-8 text", where=str(caption_file), fix="Save it as UTF-8"
            ) from exc
    return _missing_caption(image, str(caption_file), options, tally)


def _missing_caption(image: Path, looked_for: str, options: ImageFolderOptions, tally: Tally) -> str:
    if options.missing_caption == "error":
        raise LoraplugError(
            f"The image {image.name} has no caption",
            where=looked_for,
            fix='Add the caption, or set data.missing_caption = "empty" (train it uncaptioned) or "filename" (use its name)',
        )
    tally.empty_captions += 1
    if options.missing_caption == "filename":
        return image.stem.replace("_", " ").replace("-", " ").strip()
    return ""


def _read_table(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Rows of a metadata file as ``(file:line, row)``."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LoraplugError(f"{path} is not UTF-8 text", where=str(path), fix="Save it as UTF-8") from exc
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        return [(f"{path.name}:{n}", dict(row)) for n, row in enumerate(reader, start=2)]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LoraplugError(
                f"Line {number} of {path.name} is not valid JSON ({exc.msg})",
                where=f"{path}:{number}",
                fix='Each line must be an object such as {"image_path": "cat.png", "caption": "a cat"}',
            ) from exc
        if not isinstance(row, dict):
            raise LoraplugError(
                f"Line {number} of {path.name} is not a JSON object", where=f"{path}:{number}"
            )
        rows.append((f"{path.name}:{number}", row))
    return rows


def _column(
    rows: list[tuple[str, dict[str, Any]]],
    wanted: str | None,
    candidates: tuple[str, ...],
    what: str,
    path: Path,
) -> str:
    present = list(rows[0][1]) if rows else []
    if wanted is not None:
        if wanted not in present:
            raise LoraplugError(
                f"The metadata file has no {what} column {wanted!r}; its columns are {', '.join(present) or 'none'}",
                where=str(path),
                fix=f"Set data.{what}_column to one of them",
            )
        return wanted
    for name in candidates:
        if name in present:
            return name
    raise LoraplugError(
        f"The metadata file has none of the usual {what} columns ({', '.join(candidates)}); "
        f"its columns are {', '.join(present) or 'none'}",
        where=str(path),
        fix=f"Set data.{what}_column",
    )


def _from_metadata(path: Path, options: ImageFolderOptions, tally: Tally) -> list[tuple[Path, str, str]]:
    rows = _read_table(path)
    if not rows:
        raise LoraplugError(
            f"The metadata file {path} has no rows", where=str(path), fix="Add a row per image"
        )
    image_column = _column(rows, options.image_column, IMAGE_COLUMNS, "image", path)
    caption_column = _column(rows, options.caption_column, CAPTION_COLUMNS, "caption", path)
    entries = []
    for where, row in rows:
        image = options.path / str(row.get(image_column) or "")
        if not row.get(image_column) or not image.is_file():
            if options.on_unreadable == "error":
                raise LoraplugError(
                    f"The image {row.get(image_column)!r} named in the metadata does not exist",
                    where=f"{path.parent / where}",
                    fix='Fix the path (relative to data.path), or set data.on_unreadable = "skip" to skip and count such rows',
                )
            tally.missing_images.append(where)
            continue
        caption = row.get(caption_column)
        if not isinstance(caption, str) or not caption.strip():
            caption = _missing_caption(
                image, f"{path.parent / where}, column {caption_column}", options, tally
            )
        entries.append((image, caption.strip(), where))
    return entries


def _from_folder(options: ImageFolderOptions, tally: Tally) -> list[tuple[Path, str, str]]:
    images = find_images(options.path)
    stems = {p.with_suffix("") for p in images}
    tally.orphan_captions = sorted(
        str(p.relative_to(options.path))
        for p in options.path.rglob(f"*{options.caption_extension}")
        if p.with_suffix("") not in stems and p.name not in METADATA_NAMES
    )
    return [
        (image, _caption_for(image, options, tally), str(image.relative_to(options.path))) for image in images
    ]


def _readable(
    entries: Iterable[tuple[Path, str, str]], options: ImageFolderOptions, tally: Tally
) -> list[Record]:
    records = []
    for image, caption, where in entries:
        problem = check_image(image)
        if problem is not None:
            if options.on_unreadable == "error":
                raise LoraplugError(
                    f"The image {image.name} cannot be read: {problem}",
                    where=str(image),
                    fix='Replace or delete it, or set data.on_unreadable = "skip" to skip and count such images',
                )
            tally.unreadable.append(f"{image.relative_to(options.path)} ({problem})")
            continue
        records.append({"id": where, "image": str(image), "caption": caption})
    return records


def load(options: ImageFolderOptions, seed: int, warn: Any) -> DataBundle:
    tally = Tally()
    metadata = options.metadata or next(
        (options.path / n for n in METADATA_NAMES if (options.path / n).is_file()), None
    )
    entries = (
        _from_metadata(metadata, options, tally) if metadata is not None else _from_folder(options, tally)
    )
    if not entries:
        raise LoraplugError(
            f"No images found in {options.path}",
            where=str(metadata or options.path),
            fix=f"Put images ({', '.join(sorted(IMAGE_SUFFIXES))}) there, with a caption in a same-stem "
            f"{options.caption_extension} file or a metadata.jsonl",
        )
    train = _readable(entries, options, tally)
    if not train:
        raise LoraplugError(
            f"None of the {len(entries)} images in {options.path} can be read",
            where=tally.unreadable[0] if tally.unreadable else str(options.path),
            fix="Check that the files are complete images (a download may have been cut off)",
        )
    if tally.orphan_captions:
        warn(
            f"{len(tally.orphan_captions)} caption file(s) have no image beside them and are ignored "
            f"(first: {tally.orphan_captions[0]})"
        )
    if tally.unreadable:
        warn(f"skipped {len(tally.unreadable)} unreadable image(s) (first: {tally.unreadable[0]})")
    val = None
    if options.val_fraction > 0 and len(train) > 1:
        train, val = hold_out(train, options.val_fraction, seed)
    summary: dict[str, Any] = {"train images": len(train)}
    if val is not None:
        summary["val images"] = len(val)
    summary.update(tally.summary())
    return DataBundle(train=train, val=val, summary=summary)
