"""What a plugin needs besides the hooks: presets, loading, dtypes, parity, optional packages, quiet libraries,
files written atomically, the replace rule, the token-length filter.

loraplug's own plugins use these and nothing else of the kind, so a third-party plugin written from
docs/plugins.md ("Toolkit") needs no helper copied out of them. Importing this module imports no torch
(the functions that need it import it in their body), so a plugin may import the toolkit from the modules
loraplug loads for ``loraplug --help``; it never imports transformers or diffusers at all: their half of
the toolkit is the ``loraplug-hf`` library (``loraplug_hf``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from loraplug.atomic import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text
from loraplug.bundles import StepResult
from loraplug.data.clean import TokenLimit, encode_within_token_limits, token_limit
from loraplug.data.filters import require_text
from loraplug.errors import LoraplugError, model_load_error
from loraplug.options import LearningRate
from loraplug.quiet import debugging, silence_warnings
from loraplug.recipe.source import parse_value
from loraplug.report import EVALUATION_DIR, show_in_report
from loraplug.rundir import build_once, sha256_file
from loraplug.runinfo import RunInfo, human_size, metric_series, read_run, read_runs
from loraplug.safety import confine, may_replace
from loraplug.training.sinks import artifact_as_text

if TYPE_CHECKING:
    import torch
    from pydantic import BaseModel, ValidationInfo

    from loraplug.plugins import PluginHost
    from loraplug.recipe.model import Recipe

R = TypeVar("R")

__all__ = [
    "BITSANDBYTES_INSTALL",
    "DTYPE_NAMES",
    "EVALUATION_DIR",
    "PARITY_TOLERANCES",
    "TORCHAO_INSTALL",
    "LearningRate",
    "Preset",
    "RunInfo",
    "StepFn",
    "TokenLimit",
    "artifact_as_text",
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "build_once",
    "cache_dir",
    "check_recipe",
    "confine",
    "core_sections",
    "debugging",
    "dtype_name",
    "encode_within_token_limits",
    "hold_out",
    "human_size",
    "locate",
    "local_dir",
    "may_replace",
    "metric_series",
    "model_load_error",
    "parity_tolerance",
    "parse_value",
    "pretrained_source",
    "quiet_libraries",
    "read_run",
    "read_runs",
    "require_installed",
    "require_package",
    "require_text",
    "sha256_file",
    "show_in_report",
    "silence_warnings",
    "token_limit",
    "torch_dtype",
]

# ---------------------------------------------------------------------------------------------- presets


def cache_dir() -> Path:
    """loraplug's cache (presets, prepared data): ``$LORAPLUG_CACHE``, else ``~/.cache/loraplug``.
    In a hook use ``ctx.cache_dir``; this is for code that runs outside a run (a command of your own)."""
    return Path(os.environ.get("LORAPLUG_CACHE", Path.home() / ".cache" / "loraplug")).expanduser()


@dataclass(frozen=True)
class Preset:
    """A tiny model built from a config and cached under ``<cache_dir>/presets/`` (``--smoke``, tests).

    :param name: what a recipe writes as ``model.pretrained`` (``"tiny-llama"``).
    :param config: everything the build depends on, JSON-serialisable; its hash names the directory, so
        changing it (bump a ``"version"`` entry when only the build code changes) builds a fresh copy.
    :param build: writes the model into the directory it is given, e.g. with ``save_pretrained``. A
        module-level function: in a distributed run it is called in a fresh subprocess (see :func:`build_once`).
    :param marker: a file ``build`` writes last-ish, whose presence means the preset is complete.
    """

    name: str
    config: Mapping[str, Any] = field(hash=False)
    build: Callable[[Path], None] = field(hash=False)
    marker: str = "config.json"

    def directory(self, cache_dir: Path) -> Path:
        """The preset's directory under ``cache_dir``, built on first use (safe under parallel processes)."""
        key = hashlib.sha256(json.dumps(dict(self.config), sort_keys=True).encode()).hexdigest()[:12]
        return build_once(cache_dir / "presets" / f"{self.name}-{key}", self.build, marker=self.marker)


def locate(pretrained: str, cache_dir: Path, presets: Iterable[Preset] = ()) -> str:
    """What to hand to ``from_pretrained`` for ``model.pretrained``: a preset's cached directory (built on
    first use), else the value itself — a local directory (made absolute by :func:`pretrained_source`) or a hub id."""
    for preset in presets:
        if preset.name == pretrained:
            return str(preset.directory(cache_dir))
    return pretrained


def local_dir(source: str) -> Path | None:
    """``source`` as a directory when it is one (a preset, a local checkpoint), else None (a hub id):
    what :attr:`loraplug.ModelBundle.base_dir` wants, so exports can copy files from beside the weights."""
    return Path(source) if Path(source).exists() else None


def pretrained_source(presets: Iterable[str]) -> Callable[[str, ValidationInfo], str]:
    """A pydantic field validator for ``pretrained``: a preset name, a hub id, or a local directory.

    A local directory is made absolute (tried relative to the recipe, then to the current directory);
    a value that looks like a path but does not exist is a recipe error naming where it was looked for::

        _pretrained = field_validator("pretrained")(pretrained_source(["tiny-mine"]))
    """
    from loraplug.options import pretrained_source as validator

    return validator(tuple(presets))


# ------------------------------------------------------------------------------------------------- data


def hold_out(records: Sequence[R], fraction: float, seed: int) -> tuple[list[R], list[R]]:
    """``(train, val)``: a seeded random ``fraction`` of ``records`` held out for validation (a data kind's
    ``val_fraction``; pass ``ctx.seed``), at least one record when there are two or more, none from one.
    Both keep the records' order."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    count = max(1, round(len(records) * fraction)) if fraction > 0 and len(records) > 1 else 0
    held = set(order[:count])
    return [r for i, r in enumerate(records) if i not in held], [
        r for i, r in enumerate(records) if i in held
    ]


# ----------------------------------------------------------------------------------------------- dtypes

#: The dtype names recipes use for weights (``model.dtype``, an export's ``dtype``), most precise first.
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def torch_dtype(name: str) -> torch.dtype:
    """``torch.float32`` for ``"float32"`` and so on (:data:`DTYPE_NAMES`); imports torch on first call.
    ``"auto"`` (keep the checkpoint's) is the caller's to handle: it names no dtype."""
    import torch

    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype name {name!r}; expected one of {', '.join(DTYPE_NAMES)}")
    dtype: torch.dtype = getattr(torch, name)
    return dtype


def dtype_name(dtype: Any) -> str:
    """The recipe name of a dtype: ``"bfloat16"`` for ``torch.bfloat16`` or for ``"bfloat16"`` itself."""
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPE_NAMES)}")
    return name


# ----------------------------------------------------------------------------------------------- parity

#: The largest difference of outputs of order 1 a parity check accepts by default, by the compute dtype:
#: float32 differs by summation order alone; 16-bit weights by their rounding (measured on the tiny presets).
PARITY_TOLERANCES: Mapping[str, float] = {"float32": 1e-3, "float16": 2e-2, "bfloat16": 6e-2}


def parity_tolerance(*dtypes: Any, given: float | None = None) -> float:
    """The tolerance of a parity check: ``given`` (the user's ``tolerance`` option) when set, else the
    default for the least precise of ``dtypes`` (names or torch dtypes; ``"auto"`` and None count as float32)."""
    if given is not None:
        return given
    names = [dtype_name(d) for d in dtypes if d not in (None, "auto")]
    return max((PARITY_TOLERANCES[n] for n in names), default=PARITY_TOLERANCES["float32"])


# ------------------------------------------------------------------------------------ optional packages

#: How to get bitsandbytes; 0.45 and newer run on CPUs as well as CUDA GPUs.
BITSANDBYTES_INSTALL = "pip install 'bitsandbytes>=0.45'"
#: How to get torchao (int8 weight-only quantization).
TORCHAO_INSTALL = "pip install 'torchao>=0.12'"


def require_package(package: str, needed_for: str, install: str) -> None:
    """In an option validator: refuse a setting at ``recipe check`` when the package it needs is missing.

    Raises pydantic's error, which the recipe check reports against the key. ``find_spec`` looks for the
    package without importing it (bitsandbytes and torchao load torch).
    """
    from importlib.util import find_spec

    from pydantic_core import PydanticCustomError

    if find_spec(package) is None:
        raise PydanticCustomError(
            "package_missing",
            "{needed_for} needs {package}, which is not installed: `{install}`",
            {"needed_for": needed_for, "package": package, "install": install},
        )


def require_installed(package: str, needed_for: str, install: str, *, where: str | None = None) -> None:
    """In a hook: raise a :class:`~loraplug.LoraplugError` saying how to install ``package`` when it is missing."""
    from importlib.util import find_spec

    if find_spec(package) is None:
        raise LoraplugError(
            f"{needed_for} needs {package}, which is not installed", where=where, fix=f"`{install}`"
        )


# -------------------------------------------------------------------------------------- quiet libraries


@cache
def quiet_libraries(*libraries: str, loggers: tuple[str, ...] = ()) -> None:
    """Keep ``libraries``' deprecation warnings out of loraplug's output (once per process).

    Call it before importing them, in every function that does; ``loggers`` are further loggers to set
    to errors. Nothing is silenced while debugging (``LORAPLUG_DEBUG=1``). transformers and diffusers
    also keep progress bars and a log level of their own: plugins built on them call
    ``loraplug_hf.quiet_libraries``, which adds those switches (the core never imports either library).
    """
    silence_warnings([rf"{library}\..*" for library in libraries], loggers=loggers)


# ------------------------------------------------------------------------------------------------ steps

#: What the core calls for one micro-batch: ``loraplug_train_step`` bound to its plugin, returning the
#: summed loss and the number of targets.
StepFn = Callable[..., StepResult]


# ---------------------------------------------------------------------------------------------- clients
# What a program that drives loraplug from outside a run (the studio) reads recipes and runs with: the
# validation of `recipe check` and the run readers of `runs list`/`runs show`, so it never copies them.


def check_recipe(
    path: Path, host: PluginHost, overrides: Sequence[str] = (), *, smoke: bool = False
) -> Recipe:
    """What ``loraplug recipe check PATH OVERRIDES [--smoke]`` checks, with the same messages: the recipe,
    validated; a recipe with problems raises ``RecipeError`` (a :class:`~loraplug.LoraplugError` whose
    ``problems`` lists each one)."""
    from loraplug.recipe import load_recipe

    return load_recipe(path, host, tuple(overrides), smoke=smoke)


def core_sections() -> dict[str, type[BaseModel]]:
    """The options models of the recipe sections the core owns, by table: ``run``, ``train``, ``eval``, and
    ``data`` (the keys every data kind has beside its own, ``clean`` among them). A kind's options are its
    :meth:`KindSpec.options_model`."""
    from loraplug.data.options import DataCoreOptions
    from loraplug.recipe.sections import EvalSection, RunSection, TrainSection

    return {
        "run": RunSection,
        "train": TrainSection,
        "eval": EvalSection,
        "data": DataCoreOptions,
    }
