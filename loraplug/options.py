"""Building blocks for option models: the strict base class, bounded types and path types.

Plugin authors subclass :class:`Options` for each kind's options, so an unknown key is an error with
a "did you mean", a value of the wrong TOML type is an error rather than a silent conversion, and
use :data:`InputFile` / :data:`InputDir` for paths, so a missing file is reported during
``loraplug recipe check`` — before any data or model loads. Relative input paths are resolved
against the recipe file's directory.
"""

from __future__ import annotations

import errno
import os
import re
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError


class Options(BaseModel):
    """Base class for a kind's options: unknown keys are rejected, values are checked on assignment.

    Values are strict, as TOML's types are: ``true`` is not the number 1, ``"16"`` is not the integer
    16, and ``inf``/``nan`` are no number's value. An integer is still a float (``lr = 1``). TOML has
    no path or tuple type, so a path field takes a string and a tuple field an array.
    """

    # defer_build: schemas are built on first validation, not at import, keeping `--help` instant.
    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        protected_namespaces=(),
        defer_build=True,
        strict=True,
        allow_inf_nan=False,
    )

    @model_validator(mode="before")
    @classmethod
    def _from_toml(cls, data: Any) -> Any:
        # Strict mode wants a Path instance for a path and a tuple for a tuple; TOML gives a string
        # and an array. Convert just those, by the field's annotation, before pydantic checks types.
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {
            key: _toml_value(fields[key].annotation, value) if key in fields else value
            for key, value in data.items()
        }


class NoOptions(Options):
    """The options of a kind that has none (a metric, an export without settings): any key is an error."""


def _toml_value(annotation: Any, value: Any) -> Any:
    """``value`` as the annotation wants it where TOML cannot say so: a string as a Path, an array as a tuple."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return _toml_value(args[0], value)
    if origin in (typing.Union, types.UnionType):
        if any(a is type(value) for a in args):
            return value  # `str | Path` keeps a string a string
        for arm in args:
            converted = _toml_value(arm, value)
            if converted is not value:
                return converted
        return value
    if isinstance(value, str) and isinstance(annotation, type) and issubclass(annotation, Path):
        return Path(value)
    if isinstance(value, list) and origin is tuple:
        return tuple(value)
    if isinstance(value, list) and origin is list and args:
        return [_toml_value(args[0], item) for item in value]
    return value


#: The largest ``lr`` loraplug accepts. Adam-style optimisers train LoRA at 1e-5…1e-3; schedule-free and
#: Prodigy-style optimisers take lr ≈ 1. Anything above this is a typo that would diverge (NaN) later.
MAX_LR = 10.0
#: A learning rate: above 0, at most :data:`MAX_LR`.
LearningRate = Annotated[float, Field(gt=0, le=MAX_LR)]
#: The largest ``run.seed``: NumPy's seeds are 32-bit, and plugins seed with ``seed + k``.
MAX_SEED = 2**31 - 1


_DIR_NAME = re.compile(r"^\w(?:[\w.+\- ]*[\w.+\-])?$")
#: The longest name loraplug gives a directory it creates from a setting.
MAX_NAME_LENGTH = 100
#: What :func:`dir_name_problem` allows, for fixes.
DIR_NAME_RULE = (
    "one directory name of letters, digits, '_', '-', '.', '+' and inner spaces, starting with a letter, "
    f"digit or '_', at most {MAX_NAME_LENGTH} characters (no '/', '\\', '..' or absolute path)"
)


def dir_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be the one directory name loraplug creates from it, or None when it can.

    The rule for every name that becomes a directory — ``run.name``, an export's ``name``, ``loraplug
    export --name``: one path component of safe characters, so it can neither climb out (``..``), jump
    elsewhere (an absolute path, a separator) nor hide (a leading dot).
    """
    if not name:
        return "is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} characters long, more than {MAX_NAME_LENGTH}"
    if name in (".", "..") or any(sep in name for sep in ("/", "\\", os.sep)):
        return "is a path, not one directory name"
    if not _DIR_NAME.match(name):
        if not re.match(r"\w", name[0]):
            return f"starts with {name[0]!r}"
        odd = sorted({c for c in name if not re.match(r"[\w.+\- ]", c)})
        return (
            f"has the character{'s' if len(odd) > 1 else ''} {', '.join(map(repr, odd))}"
            if odd
            else f"ends with {name[-1]!r}"
        )
    return None


def _dir_name(value: str) -> str:
    problem = dir_name_problem(value)
    if problem:
        raise PydanticCustomError(
            "dir_name", "{problem}; it must be {rule}", {"problem": problem, "rule": DIR_NAME_RULE}
        )
    return value


#: A name that becomes a directory (see :func:`dir_name_problem`).
DirName = Annotated[str, AfterValidator(_dir_name)]


def unreadable_reason(path: Path, what: str = "file") -> str | None:
    """Why ``path`` cannot be opened — not found, a dangling or looping symbolic link, no permission — or None.

    ``Path.exists()`` answers False for all of these alike; a user needs to know which one it is.
    """
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{path} is a symbolic link loop (following its links never reaches a {what})"
        if exc.errno == errno.ENOENT and path.is_symlink():
            return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist"
        if exc.errno == errno.ENOENT:
            return f"{what} not found: {path}"
        return f"{path} cannot be opened: {exc.strerror}"
    except ValueError as exc:  # an embedded NUL byte
        return f"{path!r} is not a valid path: {exc}"
    return None


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
    if (reason := unreadable_reason(path, "file")) is not None:
        raise PydanticCustomError("path_missing", "{reason}", {"reason": reason})
    if not path.is_file():
        raise PydanticCustomError("path_kind", "{path} is a directory, expected a file", {"path": str(path)})
    return path


def _existing_dir(value: Path, info: ValidationInfo) -> Path:
    path = _resolve(value, info)
    if _skip_checks(info):
        return path
    if (reason := unreadable_reason(path, "directory")) is not None:
        raise PydanticCustomError("path_missing", "{reason}", {"reason": reason})
    if not path.is_dir():
        raise PydanticCustomError("path_kind", "{path} is a file, expected a directory", {"path": str(path)})
    return path


def _existing_path(value: Path, info: ValidationInfo) -> Path:
    path = _resolve(value, info)
    if _skip_checks(info):
        return path
    if (reason := unreadable_reason(path, "file or directory")) is not None:
        raise PydanticCustomError("path_missing", "{reason}", {"reason": reason})
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
        candidates = (
            [path]
            if path.is_absolute()
            else [p for p in (Path(base) / path if base else None, Path.cwd() / path) if p]
        )
        for candidate in candidates:
            if unreadable_reason(candidate, "directory") is None and candidate.is_dir():
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
