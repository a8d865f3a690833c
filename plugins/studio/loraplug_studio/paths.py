"""Every path the studio reads or writes, confined to its root.

A path comes from the browser as text relative to the root (``recipes/quickstart.toml``). It is refused
when absolute, when it names ``~``, and when any component is not a plain name or is a symbolic link
leading out of its directory: each component goes through ``loraplug.toolkit.confine``, the rule loraplug
applies to every directory name it creates (so ``..``, hidden names and links out are refused alike).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

from loraplug import LoraplugError
from loraplug.toolkit import confine


class OutsideRoot(LoraplugError):
    """A path the browser asked for that is not inside the studio's root."""


def confined(root: Path, text: str, *, key: str = "path") -> Path:
    """``root/text`` resolved, when every step of it stays inside ``root``; ``""`` or ``.`` is the root."""
    base = root.resolve()
    text = text.strip()
    if text in ("", "."):
        return base
    if PurePosixPath(text).is_absolute() or PureWindowsPath(text).anchor or text.startswith("~"):
        raise OutsideRoot(
            f"{key} {text!r} is an absolute path; the studio reads and writes only inside {base}",
            fix="Give the path relative to the studio's root",
        )
    current = base
    for part in PurePosixPath(text).parts:
        try:
            current = confine(current, part, key=key)
        except LoraplugError as exc:
            raise OutsideRoot(f"{exc.what} (in {text!r})", fix=exc.fix) from None
    return current


def relative(root: Path, path: Path) -> str:
    """``path`` as the browser names it: relative to the root, with ``/``."""
    return path.resolve().relative_to(root.resolve()).as_posix()
