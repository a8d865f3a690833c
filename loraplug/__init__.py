"""loraplug: LoRA fine-tuning for every modality, one plugin at a time.

Plugin authors need only what this module exports: ``hookimpl`` to mark hook implementations,
``KindSpec`` and ``Options`` to declare kinds, the bundle types hooks exchange, and ``LoraplugError``
for failures a user can fix — plus :mod:`loraplug.toolkit` for presets, loading and parity. See docs/plugins.md.
"""

from loraplug.bundles import (
    Artifact,
    Batch,
    DataBundle,
    ExportResult,
    ModelBundle,
    PreparedData,
    Record,
    Sample,
    StepResult,
    record_text,
)
from loraplug.context import RunContext
from loraplug.deploy import Deployable, MergeCheck
from loraplug.errors import LoraplugError
from loraplug.hookspecs import hookimpl
from loraplug.kinds import DEFAULT_OBJECTIVE, KindSpec
from loraplug.status import RunStatus
from loraplug.training.sinks import MetricSink

#: Names imported on first use: they need pydantic, which `loraplug --help` should not pay for.
_LAZY = {
    name: "loraplug.options"
    for name in ("InputDir", "InputFile", "InputPath", "NoOptions", "Options", "RecipePath")
}
# The plugin host imports pluggy and every kind declaration: loaded when a caller asks for it.
_LAZY |= {"load_plugins": "loraplug.plugins", "PluginHost": "loraplug.plugins"}
# Auto-captioning of an image folder (`loraplug data caption`, the studio): loraplug/captioning.py.
_LAZY |= {name: "loraplug.captioning" for name in ("CaptionContext", "Captioner", "caption_folder")}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'loraplug' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "DEFAULT_OBJECTIVE",
    "Artifact",
    "Batch",
    "CaptionContext",
    "Captioner",
    "DataBundle",
    "Deployable",
    "ExportResult",
    "InputDir",
    "InputFile",
    "InputPath",
    "KindSpec",
    "LoraplugError",
    "MergeCheck",
    "MetricSink",
    "ModelBundle",
    "NoOptions",
    "Options",
    "PluginHost",
    "PreparedData",
    "Record",
    "RecipePath",
    "RunContext",
    "RunStatus",
    "Sample",
    "StepResult",
    "__version__",
    "caption_folder",
    "hookimpl",
    "load_plugins",
    "record_text",
]
