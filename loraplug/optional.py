"""Keep the optional libraries a run does not use out of its process.

transformers, diffusers and peft import bitsandbytes, torchao and scipy whenever they are installed:
peft imports bitsandbytes in ``peft.helpers`` and again when it attaches LoRA, transformers' and
diffusers' quantizer registries import bitsandbytes and torchao, and transformers' object-detection
losses import scipy — all while ``transformers.modeling_utils`` or ``diffusers`` loads. A run uses
them only for QLoRA, a quantized export or a few data filters; on the tiny runs they cost about a
tenth of the peak memory, and bitsandbytes printed "Failed to load CPU gemm_4bit_forward from
kernels-community" on every run (docs/performance.md).

Each of those libraries first asks ``importlib.util.find_spec``, which answers ``None`` for a name
whose ``sys.modules`` entry is ``None``, and ``import`` of such a name raises ``ImportError`` (the
documented meaning of that entry). So a library marked that way before they load is skipped as not
installed. That answer is cached for the life of the process, so only the ``loraplug`` program
itself decides (:func:`decide_for_this_process`) — not the Python API or tests that call the CLI in
their own process — and only before torch is loaded.

What a recipe uses, its options say: an options model (of a kind, or the core's) with a method
``optional_libraries()`` returns the names of :data:`OPTIONAL_LIBRARIES` its current values make the
kind import. First-party kinds without the method import none; a kind of any other plugin without it
may import anything, so nothing is kept out of its runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from loraplug.kinds import Served
from loraplug.plugins import FIRST_PARTY

#: Libraries the modality libraries import whenever installed, though few runs use them.
OPTIONAL_LIBRARIES = ("bitsandbytes", "torchao", "scipy")
#: Set to 1 to load every installed library as before (for a plugin that imports one without saying so).
LOAD_ALL_VARIABLE = "LORAPLUG_LOAD_ALL_LIBRARIES"
#: Distributions whose kinds are known to import no optional library unless their options say so.
_KNOWN = FIRST_PARTY | {"loraplug"}

_may_decide = False


def decide_for_this_process() -> None:
    """Let :func:`keep_out_unused` act: this process is the ``loraplug`` program, running one command."""
    global _may_decide
    _may_decide = True


def used_by(recipe: Any, *extra: Any) -> set[str] | None:
    """The optional libraries ``recipe`` imports, or ``None`` when one of its kinds does not say."""
    used: set[str] = set()
    for options, served in _options_of(recipe, *extra):
        declare = getattr(options, "optional_libraries", None)
        if declare is not None:
            used.update(declare())
        elif served is not None and served.distribution not in _KNOWN:
            return None
    return used


def keep_out_unused(recipe: Any, *extra: Any) -> tuple[str, ...]:
    """Mark each optional library ``recipe`` does not use as not installed, where this process may decide.

    Returns the libraries kept out (none: not the ``loraplug`` program, torch already loaded,
    :data:`LOAD_ALL_VARIABLE` set, or a kind that does not say what it imports).
    """
    if not _may_decide or "torch" in sys.modules or os.environ.get(LOAD_ALL_VARIABLE, "") not in ("", "0"):
        return ()
    used = used_by(recipe, *extra)
    if used is None:
        return ()
    kept_out = tuple(name for name in OPTIONAL_LIBRARIES if name not in used and name not in sys.modules)
    for name in kept_out:
        sys.modules[name] = None  # type: ignore[assignment]  # "not importable", as Python documents it
    return kept_out


def _options_of(recipe: Any, *extra: Any) -> Iterator[tuple[Any, Served | None]]:
    """Every options model in ``recipe`` with the kind it configures (``None`` for the core's own)."""
    from loraplug.recipe.model import KindSection

    def walk(value: Any) -> Iterator[tuple[Any, Served | None]]:
        if isinstance(value, KindSection):
            yield value.options, value.served
            for extra in vars(value).values():  # a section's own parts: the core's [data] keys, filters
                if not isinstance(extra, (str, Served)) and extra is not value.options:
                    yield from walk(extra)
        elif isinstance(value, Served):
            yield None, value
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                yield from walk(item)
        elif isinstance(value, BaseModel):  # an options model of the core's (a section, [data.clean])
            yield value, None
            for name in type(value).model_fields:
                yield from walk(getattr(value, name))

    for value in (*vars(recipe).values(), *extra):
        yield from walk(value)
