"""What loraplug may write to and what it may replace: one rule for runs, smoke runs, exports and packed shards.

loraplug replaces only a directory it wrote itself, recognised by what it leaves there (a run's
``run.json``, an export's ``export.json``, packed shards), and only when the user said so
(``--overwrite``; ``--smoke`` says so for an earlier smoke run only). A directory holding anything
else is the user's: it is refused with a message that suggests no flag, because no flag replaces it.

A name that becomes a directory (``run.name``, an export's name) is resolved and must land directly
inside the directory it names a child of, so ``..``, an absolute path, a separator or a symlink can
never send a write elsewhere. docs/runs.md, "What loraplug replaces", says the same for users.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, ValidationInfo
from pydantic_core import PydanticCustomError

from loraplug.errors import LoraplugError
from loraplug.options import DIR_NAME_RULE, dir_name_problem

#: Pseudo-filesystems of the kernel: nothing a run writes belongs there.
_KERNEL_FILESYSTEMS = (Path("/proc"), Path("/sys"))


def confine(parent: Path, name: str, *, key: str) -> Path:
    """``parent/name`` resolved, when it is a directory name directly inside resolved ``parent``.

    The name follows the recipe's rule for names (:func:`loraplug.options.dir_name_problem`), checked
    again here so that a name that reached this point some other way still cannot leave ``parent``.

    :param key: what ``name`` came from (``run.name``, ``--name``), for the error.
    :raises LoraplugError: for a name that breaks the rule (a path, ``..``), or a symlink that leads out of ``parent``.
    """
    base = parent.expanduser().resolve()
    if (problem := dir_name_problem(name)) is not None:
        raise LoraplugError(
            f"{key} {name!r} {problem}, so it cannot name a directory inside {base}",
            fix=f"Use {DIR_NAME_RULE}",
        )
    target = (base / name).resolve()
    if target.parent != base:
        # Only a symlink gets here (the name itself is one component): follow it and the write lands elsewhere.
        raise LoraplugError(
            f"{key} {name!r}: {base / name} is a symbolic link to {target}, outside {base}",
            fix=f"Remove the link, or choose another {key}",
        )
    return target


def may_replace(
    path: Path,
    *,
    holds: str | None,
    overwrite: bool,
    key: str,
    elsewhere: str,
    ours: str,
    replacing: str = "",
    keep: Sequence[Path] = (),
) -> bool:
    """Decide whether loraplug may write ``path``: False when nothing is there to replace (absent or an
    empty directory), True when it holds loraplug's own output and the user agreed to replace it.

    :param holds: what of loraplug's ``path`` holds, as a phrase ("a finished run"), or None when it
        holds none of it — found by the caller, who knows its layout's marker.
    :param overwrite: the user agreed to replace what ``holds`` describes.
    :param key: the setting or option that named ``path`` (``run.output_dir / run.name``, ``--out``).
    :param elsewhere: how to write somewhere else instead, for the fix.
    :param ours: what loraplug recognises as its own output, and why ``path`` is not it
        ("a loraplug run (it has no run.json)").
    :param replacing: how a replacement happens, said beside the ``--overwrite`` hint.
    :param keep: paths that must survive: ``path`` may be none of them, nor lie inside or contain one.
    :raises LoraplugError: for anything else; its fix never names a flag that would delete the user's files.
    """
    target = path.expanduser().resolve()
    for source in keep:
        relation = _overlap(target, source.expanduser().resolve())
        if relation:
            raise LoraplugError(
                f"{key} {target} {relation} {source}: writing there would change or delete the data being read",
                fix=f"Write outside the source: {elsewhere}",
            )
    if not target.exists():
        return False
    if not target.is_dir():
        raise LoraplugError(
            f"{key} {target} is a file, not a directory; loraplug never replaces files it did not write",
            fix=f"Move the file away yourself, or {elsewhere}",
        )
    if not any(target.iterdir()):
        return False
    if holds is None:
        raise LoraplugError(
            f"{key} {target} is not empty and is not {ours}; loraplug never replaces files it did not write",
            fix=f"Move its contents away yourself, or {elsewhere}",
        )
    if overwrite:
        return True
    raise LoraplugError(
        f"{key} {target} already holds {holds}",
        fix=f"Pass --overwrite to replace it{f' ({replacing})' if replacing else ''}, or {elsewhere}",
    )


def _overlap(target: Path, source: Path) -> str | None:
    if target == source:
        return "is the source"
    if target.is_relative_to(source):
        return "lies inside the source"
    if source.is_relative_to(target):
        return "contains the source"
    return None


def output_dir_problem(path: Path) -> str | None:
    """Why runs cannot be written under ``path`` (a file, a kernel filesystem, read-only), or None.

    Checked when the recipe is, so `recipe check` refuses it before anything loads.
    """
    try:
        return _output_dir_problem(path.expanduser().resolve())
    except OSError as exc:  # a name too long for the filesystem, a path through a loop of links
        return f"{path} cannot be used as a directory: {exc.strerror or exc}"


def _output_dir_problem(target: Path) -> str | None:
    if any(target == kernel or target.is_relative_to(kernel) for kernel in _KERNEL_FILESYSTEMS):
        return f"{target} is in a filesystem of the kernel ({target.parts[1]}), where no run can be written"
    existing = next((p for p in (target, *target.parents) if p.exists()), None)
    if existing is None:
        return None
    if not existing.is_dir():
        return (
            f"{existing} is a file, not a directory"
            if existing == target
            else f"{existing} (a part of {target}) is a file, not a directory"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable" + (
            "" if existing == target else f" (so {target} cannot be created)"
        )
    return None


def _writable_output_dir(value: Path, info: ValidationInfo) -> Path:
    # Re-reading a finished run's recipe (runs show, export) must not depend on where it was written.
    if (info.context or {}).get("check_files", True):
        problem = output_dir_problem(value)
        if problem:
            raise PydanticCustomError(
                "path_unwritable",
                "{problem}; set run.output_dir to a directory you can write to",
                {"problem": problem},
            )
    return value


#: ``run.output_dir``: kept as written (relative to the current directory), refused by `recipe check`
#: when no run could be written under it.
OutputDir = Annotated[Path, AfterValidator(_writable_output_dir)]
