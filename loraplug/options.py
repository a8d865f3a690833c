"""Building blocks for option models: the strict base class and path types.

Plugin authors subclass :class:`Options` for each kind's options, so an unknown key is an error with
a "did you mean", and use :data:`InputFile` / :data:`InputDir` for paths, so a missing file is
reported during ``loraplug recipe check`` — before any data or model loads. Relative input paths are
resolved against the recipe file's directory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo
from pydantic_core import PydanticCustomError


class Options(BaseModel):
    """Base class for a kind's options: unknown keys are rejected, values are checked on assignment."""

    # defer_build: schemas are built on first validation, not at import, keeping `--help` instant.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), defer_build=True)


def _resolve(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    path = value.expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path.absolute()


def _skip_checks(info: ValidationInfo) -> bool:
    # Re-reading a finished run's recipe (to generate or export) must not need its data files.
    return not (info.context or {}).get("check_files", True)


def _existing_file(value: Path, info: ValidationInfo) -> Path:
    path = _resolve(value, info)
    if _skip_checks(info):
        return path
    if not path.exists():
        raise PydanticCustomError("path_missing", "file not found: {path}", {"path": str(path)})
    if not path.is_file():
        raise PydanticCustomError("path_kind", "{path} is a directory, expected a file", {"path": str(path)})
    return path


def _existing_dir(value: Path, info: ValidationInfo) -> Path:
    path = _resolve(value, info)
    if _skip_checks(info):
        return path
    if not path.exists():
        raise PydanticCustomError("path_missing", "directory not found: {path}", {"path": str(path)})
    if not path.is_dir():
        raise PydanticCustomError("path_kind", "{path} is a file, expected a directory", {"path": str(path)})
    return path


def _existing_path(value: Path, info: ValidationInfo) -> Path:
    path = _resolve(value, info)
    if _skip_checks(info):
        return path
    if not path.exists():
        raise PydanticCustomError("path_missing", "not found: {path}", {"path": str(path)})
    return path


#: A file that must exist; relative to the recipe's directory.
InputFile = Annotated[Path, AfterValidator(_existing_file)]
#: A directory that must exist; relative to the recipe's directory.
InputDir = Annotated[Path, AfterValidator(_existing_dir)]
#: A file or directory that must exist; relative to the recipe's directory.
InputPath = Annotated[Path, AfterValidator(_existing_path)]
#: A path resolved against the recipe's directory that need not exist yet.
RecipePath = Annotated[Path, AfterValidator(_resolve)]


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def pretrained_source(presets: Sequence[str]) -> Callable[[str, ValidationInfo], str]:
    """A field validator for a model's ``pretrained``: a preset name, a hub id, or a local directory.

    A local directory is made absolute (tried relative to the recipe, then to the current directory);
    a value that looks like a path but does not exist is an error naming where it was looked for. Use
    it as ``_pretrained = field_validator("pretrained")(pretrained_source(PRESETS))``.
    """

    def resolve(value: str, info: ValidationInfo) -> str:
        if value in presets:
            return value
        path = Path(value).expanduser()
        base = (info.context or {}).get("base_dir")
        candidates = [path] if path.is_absolute() else [p for p in (Path(base) / path if base else None, Path.cwd() / path) if p]
        for candidate in candidates:
            if candidate.is_dir():
                return str(candidate.absolute())
        looks_local = value.startswith((".", "/", "~")) or value.count("/") > 1 or not _HUB_ID.match(value)
        if looks_local:
            if _skip_checks(info):
                return str(candidates[0].absolute())
            raise PydanticCustomError(
                "path_missing",
                "model directory not found: {path} (a hub id looks like org/name; presets: {presets})",
                {"path": str(candidates[0].absolute()), "presets": ", ".join(presets)},
            )
        return value

    return resolve
