"""Auto-captioning: write a caption beside every image of a folder with a ``caption`` kind.

``loraplug data caption DIR --kind wd14`` and the studio both call :func:`caption_folder`. The kind's
plugin builds a :class:`Captioner` (``loraplug_build_captioner``); this module walks the folder, feeds
it batches of images, and writes each caption to a same-stem ``.txt`` file — the layout the
``imagefolder`` data kind reads. A caption that is already there is the user's work: it is kept unless
``overwrite`` is asked, and then only that ``.txt`` file is replaced, written to a temporary name and
renamed, so a reader never sees half a caption. Nothing else in the folder is written or removed.

The core imports no imaging library at module level (PIL opens images inside :func:`caption_folder`),
and no model library at all: the plugins do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from loraplug.atomic import atomic_write_text
from loraplug.errors import LoraplugError, PluginError

if TYPE_CHECKING:
    from PIL import Image

    from loraplug.plugins import PluginHost
    from loraplug.recipe.model import KindSection

#: The images a folder is captioned for: those the ``imagefolder`` data kind trains on.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
CAPTION_SUFFIX = ".txt"
#: How tags are joined in a caption file: what kohya's tagger writes and the ``imagefolder`` kind's
#: tag operations (shuffle, keep tokens) split on.
TAG_SEPARATOR = ", "

#: One image's caption as a captioner returns it: a sentence, or tags in the order they should be written.
Caption = str | Sequence[str]


@runtime_checkable
class Captioner(Protocol):
    """What ``loraplug_build_captioner`` returns: a model ready to caption images.

    ``caption(images)`` gets a batch of PIL images as they were opened (any mode: RGBA, palette,
    greyscale — convert them as the model needs) and returns one :data:`Caption` per image, in order:
    a string (a sentence) or a sequence of tags.
    """

    def caption(self, images: Sequence[Image.Image]) -> Sequence[Caption]: ...


def _print(message: str) -> None:
    print(message)


@dataclass
class CaptionContext:
    """What a captioner's plugin gets besides its options (there is no recipe and no run).

    :param cache_dir: loraplug's cache (``$LORAPLUG_CACHE``, else ``~/.cache/loraplug``).
    :param device: where to run the model: ``"cpu"``, ``"cuda"``…; ``None`` lets the plugin pick (a GPU
        when there is one).
    :param info: print a line for the user.
    :param warn: print a warning for the user.
    """

    cache_dir: Path
    device: str | None = None
    info: Callable[[str], None] = _print
    warn: Callable[[str], None] = _print


@dataclass
class CaptionSummary:
    """What :func:`caption_folder` did, image by image.

    :param written: captions written where there was none, with their text.
    :param replaced: captions that replaced an existing ``.txt`` (``overwrite``), with their new text.
    :param kept: images whose existing caption was left as it was (no ``overwrite``).
    :param skipped: images that get no caption, with the reason: they could not be decoded, their
        caption file would land outside the folder (a linked sub-folder), or another image of the same
        stem (``a.png``, ``a.jpg``) already claimed ``a.txt``.
    """

    folder: Path
    kind: str
    written: dict[Path, str] = field(default_factory=dict)
    replaced: dict[Path, str] = field(default_factory=dict)
    kept: list[Path] = field(default_factory=list)
    skipped: dict[Path, str] = field(default_factory=dict)

    @property
    def images(self) -> int:
        return len(self.written) + len(self.replaced) + len(self.kept) + len(self.skipped)

    def captions(self) -> dict[Path, str]:
        """Every caption written by this call, by image."""
        return {**self.written, **self.replaced}

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready view (paths relative to the folder), for the studio and ``--json``."""

        def rel(path: Path) -> str:
            return path.relative_to(self.folder).as_posix()

        return {
            "folder": str(self.folder),
            "kind": self.kind,
            "images": self.images,
            "written": {rel(p): text for p, text in self.written.items()},
            "replaced": {rel(p): text for p, text in self.replaced.items()},
            "kept": [rel(p) for p in self.kept],
            "skipped": {rel(p): why for p, why in self.skipped.items()},
        }


def caption_text(caption: Caption, *, prefix: Sequence[str] = (), append: Sequence[str] = ()) -> str:
    """The text of a caption file: tags joined by ``", "`` (a sentence as it is), with ``prefix`` tags
    first and ``append`` tags last; a tag the captioner also found is written once, where ``prefix`` or
    ``append`` puts it."""
    if isinstance(caption, str):
        body = [caption.strip()] if caption.strip() else []
    else:
        body = [str(tag).strip() for tag in caption if str(tag).strip()]
    added = {tag for tag in (*prefix, *append)}
    tags = [*prefix, *(tag for tag in body if tag not in added), *append]
    return TAG_SEPARATOR.join(dict.fromkeys(tag for tag in tags if tag))


def find_images(folder: Path) -> list[Path]:
    """The images under ``folder`` (sub-folders too, hidden files skipped), sorted: what
    :func:`caption_folder` captions and the ``imagefolder`` data kind reads."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def caption_options(
    kind: str,
    options: Mapping[str, Any] | None = None,
    *,
    host: PluginHost,
    given: Mapping[str, str] | None = None,
) -> KindSection:
    """The caption kind ``kind`` and its ``options`` checked as a recipe section is: every unknown key
    (with did-you-mean), wrong type or bad value named at once.

    :param given: how each option was written, by key (``{"threshold": "--option threshold=2"}``), for
        the error's "where".
    :raises LoraplugError: an unknown kind (with the installed ones) or invalid options.
    """
    from loraplug.recipe.validate import command_line_section

    try:
        host.lookup("caption", kind)  # an unknown or uninstalled kind: its own error, with what to install
    except PluginError as exc:
        raise PluginError(
            exc.what, where="--kind", fix=(exc.fix or "").replace("`caption.kind`", "--kind")
        ) from exc
    return command_line_section(
        host,
        "caption",
        {"kind": kind, **dict(options or {})},
        given=dict(given or {}),
        subject=f"The {kind} caption kind's options",
        fix="Fix the options (`--option KEY=VALUE`); docs/captioning.md lists every caption kind's keys",
    )


def load_captioner(
    kind: str,
    options: Mapping[str, Any] | None = None,
    *,
    host: PluginHost | None = None,
    ctx: CaptionContext | None = None,
) -> Captioner:
    """A captioner of ``kind`` built with ``options`` (checked first), ready for ``caption(images)``:
    for a caller that captions images of its own, one at a time (the studio's "caption this image")."""
    from loraplug.plugins import load_plugins

    host = host or load_plugins()
    section = caption_options(kind, options, host=host)
    return host.build_captioner(section, ctx or default_context())


def default_context() -> CaptionContext:
    from loraplug.toolkit import cache_dir

    return CaptionContext(cache_dir=cache_dir())


def caption_folder(
    folder: Path | str,
    kind: str,
    options: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
    prefix: Sequence[str] = (),
    append: Sequence[str] = (),
    batch_size: int = 8,
    host: PluginHost | None = None,
    ctx: CaptionContext | None = None,
    captioner: Captioner | None = None,
    on_caption: Callable[[Path, str], None] | None = None,
) -> CaptionSummary:
    """Caption every image under ``folder`` with the caption kind ``kind``; write ``<image stem>.txt``.

    :param options: the kind's options, as a recipe section would hold them (``{"threshold": 0.5}``).
    :param overwrite: replace captions that already exist (only those ``.txt`` files); otherwise an
        image with a caption is left alone and listed in ``CaptionSummary.kept``.
    :param prefix: tags written first in every caption (a trigger word); ``append``: tags written last.
    :param batch_size: images handed to the captioner at once.
    :param captioner: one built already by :func:`load_captioner` (``kind`` and ``options`` are then
        only named in the summary), so a caller captioning several folders loads the model once.
    :param on_caption: called after each caption file is written, with the image and the text (progress).
    :raises LoraplugError: ``folder`` is not a directory, the kind is unknown or its options invalid, or
        the model cannot be loaded. An image that cannot be decoded is skipped and listed in
        ``CaptionSummary.skipped``.
    """
    root = Path(folder).expanduser().absolute()
    if not root.is_dir():
        raise LoraplugError(
            f"{root} is not a directory" if root.exists() else f"Image folder not found: {root}",
            where="DIR",
            fix="Pass the folder that holds the images to caption",
        )
    if batch_size < 1:
        raise LoraplugError(f"The batch size must be at least 1, not {batch_size}", where="--batch-size")
    if captioner is None:
        from loraplug.plugins import load_plugins

        host = host or load_plugins()
        section = caption_options(kind, options, host=host)  # before the walk: a typo costs nothing
    summary = CaptionSummary(folder=root, kind=kind)
    todo: list[tuple[Path, Path]] = []
    claimed: dict[Path, Path] = {}
    for image in find_images(root):
        target = image.with_suffix(CAPTION_SUFFIX)
        if target in claimed:
            # a.png and a.jpg share a.txt (the imagefolder kind reads it for both): caption it once.
            summary.skipped[image] = (
                f"{claimed[target].name} has the same stem, and its caption is {target.name}"
            )
            continue
        claimed[target] = image
        if not _inside(target, root):
            # A sub-folder that is a link out of the folder: a caption written there lands elsewhere.
            summary.skipped[image] = f"its caption {target} would be written outside {root} (a link)"
        elif target.exists() or target.is_symlink():
            if not overwrite or not target.is_file():
                summary.kept.append(image)  # the user's caption (or something that is no caption file)
            else:
                todo.append((image, target))
        else:
            todo.append((image, target))
    if not todo:
        return summary
    if captioner is None:
        assert host is not None  # noqa: S101 — for mypy: set with section above
        captioner = host.build_captioner(section, ctx or default_context())
    for batch in _batches(todo, batch_size):
        opened = [(image, target, _open(image, summary)) for image, target in batch]
        readable = [(image, target, picture) for image, target, picture in opened if picture is not None]
        if not readable:
            continue
        captions = captioner.caption([picture for _, _, picture in readable])
        _check_answer(captions, len(readable), kind)
        for (image, target, _), caption in zip(readable, captions, strict=True):
            text = caption_text(caption, prefix=prefix, append=append)
            existed = target.exists()
            atomic_write_text(target, text + "\n")
            (summary.replaced if existed else summary.written)[image] = text
            if on_caption is not None:
                on_caption(image, text)
    return summary


def _inside(path: Path, root: Path) -> bool:
    return path.parent.resolve().is_relative_to(root.resolve())


def _batches(items: list[tuple[Path, Path]], size: int) -> Iterator[list[tuple[Path, Path]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _open(image: Path, summary: CaptionSummary) -> Image.Image | None:
    """The image decoded (so a truncated file fails here, not in the model), or None, recorded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image) as opened:
            opened.load()
            return opened.copy()
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        summary.skipped[image] = f"cannot be decoded: {(str(exc).splitlines() or [type(exc).__name__])[0]}"
        return None


def _check_answer(captions: Any, expected: int, kind: str) -> None:
    if (
        isinstance(captions, str)
        or not isinstance(captions, Sequence)
        or len(captions) != expected
        or not all(isinstance(c, str | Sequence) for c in captions)
    ):
        got = f"{len(captions)} answers" if isinstance(captions, Sequence) else type(captions).__name__
        raise PluginError(
            f"The captioner of the caption kind {kind!r} returned {got} for {expected} images; "
            "expected one caption (a string or a list of tags) per image",
            fix=f"This is a bug in the plugin serving {kind!r}; report it to its authors",
        )


__all__ = [
    "CAPTION_SUFFIX",
    "Caption",
    "CaptionContext",
    "CaptionSummary",
    "Captioner",
    "caption_folder",
    "caption_options",
    "caption_text",
    "find_images",
    "load_captioner",
]
