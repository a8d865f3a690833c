"""The dataset page's data: an image folder's captions and tags, a JSONL's records, and caption writes.

Captions are the ``.txt`` beside each image (what the ``imagefolder`` data kind reads; kohya's layout).
Every write is atomic (``loraplug.toolkit.atomic_write_text``) and recorded in the browser session's undo
history, which puts back what was there before (or removes a caption the studio created).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraplug import LoraplugError
from loraplug.toolkit import atomic_write_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_SUFFIX = ".txt"
#: Records shown of a JSONL file (the page is a preview, not an editor).
JSONL_PREVIEW = 200


def caption_path(image: Path) -> Path:
    return image.with_suffix(CAPTION_SUFFIX)


def read_caption(image: Path) -> str | None:
    try:
        return caption_path(image).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def tags_of(caption: str) -> list[str]:
    """A caption's comma-separated tags (booru style), stripped; empty ones dropped."""
    return [t.strip() for t in caption.split(",") if t.strip()]


def images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise LoraplugError(f"{folder} is not a directory", fix="Pick an image folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def tag_frequencies(folder: Path) -> list[tuple[str, int]]:
    counts: Counter[str] = Counter()
    for image in images(folder):
        counts.update(set(tags_of(read_caption(image) or "")))
    return counts.most_common()


def read_jsonl(path: Path, limit: int = JSONL_PREVIEW) -> tuple[list[dict[str, Any]], int, list[str]]:
    """``(records shown, lines in the file, problems)``: a line that is not a JSON object is a problem named by its line."""
    records: list[dict[str, Any]] = []
    problems: list[str] = []
    count = 0
    # Bytes, split on newlines: a line that is not UTF-8 is one problem, not the end of the preview.
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            count += 1
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"line {number}: not JSON ({exc.msg})")
                continue
            except UnicodeDecodeError:
                problems.append(f"line {number}: not UTF-8 text")
                continue
            if not isinstance(record, dict):
                problems.append(f"line {number}: a JSON {type(record).__name__}, not an object")
            elif len(records) < limit:
                records.append(record)
    return records, count, problems


@dataclass
class Edit:
    path: Path
    #: What the file held before (``None``: it did not exist).
    before: str | None


@dataclass
class UndoHistory:
    """Each browser session's writes, newest last; one entry per action (a bulk operation is one)."""

    sessions: dict[str, list[list[Edit]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, session: str, edits: list[Edit]) -> None:
        if edits:
            with self.lock:
                self.sessions.setdefault(session, []).append(edits)

    def undo(self, session: str) -> list[Path]:
        with self.lock:
            stack = self.sessions.get(session) or []
            if not stack:
                raise LoraplugError(
                    "Nothing to undo in this session", fix="Undo puts back the edits made from this browser"
                )
            edits = stack.pop()
        for edit in reversed(edits):
            if edit.before is None:
                edit.path.unlink(missing_ok=True)
            else:
                atomic_write_text(edit.path, edit.before)
        return [e.path for e in edits]


def write_caption(image: Path, text: str, *, confirm: bool) -> Edit | None:
    """Write ``image``'s caption; an existing one is replaced only with ``confirm``. ``None`` when unchanged."""
    if not image.is_file() or image.suffix.lower() not in IMAGE_SUFFIXES:
        raise LoraplugError(f"{image.name} is not an image in this folder", fix="Reload the page")
    before = read_caption(image)
    if before == text:
        return None
    if before is not None and not confirm:
        raise NeedsConfirm(f"{caption_path(image).name} exists; replace its caption?")
    atomic_write_text(caption_path(image), text)
    return Edit(caption_path(image), before)


class NeedsConfirm(LoraplugError):
    """A write that would replace a file the user has not agreed to replace."""


def bulk_tags(folder: Path, op: str, tag: str, new: str = "") -> list[tuple[Path, str]]:
    """The captions ``op`` changes and their new text: ``add`` (at the end, when missing), ``remove``,
    ``replace`` (``tag`` by ``new``), ``front`` (move ``tag`` first, as kohya's keep_tokens wants)."""
    tag, new = tag.strip(), new.strip()
    if not tag or "," in tag or "," in new:
        raise LoraplugError("A tag is one non-empty tag without commas", fix="Type one tag")
    if op == "replace" and not new:
        raise LoraplugError("replace needs the new tag", fix="Type the tag to put in its place")
    changes = []
    for image in images(folder):
        before = read_caption(image)
        tags = tags_of(before or "")
        if op == "add":
            after = tags if tag in tags else [*tags, tag]
        elif op == "remove":
            after = [t for t in tags if t != tag]
        elif op == "replace":
            after = list(dict.fromkeys(new if t == tag else t for t in tags))
        elif op == "front":
            after = [tag, *(t for t in tags if t != tag)] if tag in tags else tags
        else:
            raise LoraplugError(f"unknown tag operation {op!r}", fix="Use add, remove, replace or front")
        if after != tags:
            changes.append((image, ", ".join(after)))
    return changes


def candidate_datasets(root: Path, limit: int = 50) -> list[str]:
    """Image folders and JSONL files under the root's recipes/data, data/ and datasets/ (what the page offers),
    relative to the root."""
    found: list[str] = []
    for top in (root / "recipes" / "data", root / "data", root / "datasets"):
        if not top.is_dir():
            continue
        for path in sorted(top.rglob("*")):
            if len(found) >= limit:
                return found
            if any(part.startswith(".") for part in path.relative_to(root).parts):
                continue
            if (
                path.is_file()
                and path.suffix == ".jsonl"
                or path.is_dir()
                and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())
            ):
                found.append(path.relative_to(root).as_posix())
    return found


# ------------------------------------------------------------------------------------------ auto-captioning


@dataclass
class AutoCaption:
    """One auto-captioning at a time, in a thread of the studio (``loraplug.caption_folder``, the API
    ``loraplug data caption`` is built on); its progress is polled by the page, its writes are undoable."""

    progress: dict[str, Any] = field(default_factory=lambda: {"state": "idle"})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(
        self,
        folder: Path,
        kind: str,
        options: dict[str, Any],
        *,
        overwrite: bool,
        prefix: list[str],
        host: Any,
        done: Any,
    ) -> None:
        """Caption ``folder`` in the background; ``done(edits)`` gets what was written, for the undo history."""
        import loraplug

        with self.lock:
            if self.progress.get("state") == "running":
                raise LoraplugError(
                    f"Captioning {self.progress.get('folder')} is still running", fix="Wait for it to finish"
                )
            total = len([p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES])
            self.progress = {
                "state": "running",
                "folder": folder.name,
                "kind": kind,
                "done": 0,
                "total": total,
            }
        before = {path: path.read_text(encoding="utf-8") for path in folder.rglob(f"*{CAPTION_SUFFIX}")}

        def step(image: Path, text: str) -> None:
            self.progress["done"] = int(self.progress["done"]) + 1

        def work() -> None:
            try:
                summary = loraplug.caption_folder(
                    folder, kind, options, overwrite=overwrite, prefix=prefix, host=host, on_caption=step
                )
            except LoraplugError as exc:
                self.progress = {**self.progress, "state": "failed", "error": exc.paragraph()}
                return
            except Exception as exc:  # a captioner's own failure: shown on the page, the studio goes on
                self.progress = {**self.progress, "state": "failed", "error": f"{type(exc).__name__}: {exc}"}
                return
            done([Edit(caption_path(image), before.get(caption_path(image))) for image in summary.captions()])
            result = summary.as_json()
            self.progress = {
                **self.progress,
                "state": "finished",
                "written": len(result["written"]),
                "replaced": len(result["replaced"]),
                "kept": len(result["kept"]),
                "skipped": result["skipped"],
            }

        threading.Thread(target=work, name="studio-caption", daemon=True).start()
