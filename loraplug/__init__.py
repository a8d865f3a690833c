"""loraplug: LoRA fine-tuning for every modality, one plugin at a time.

Plugin authors need only what this module exports: ``hookimpl`` to mark hook implementations,
``KindSpec`` and ``Options`` to declare kinds, the bundle types hooks exchange, and ``LoraplugError``
for failures a user can fix. See docs/plugins.md.
"""

from loraplug.bundles import Batch, DataBundle, ExportResult, ModelBundle, PreparedData, Record, Sample, StepResult
from loraplug.context import RunContext
from loraplug.errors import LoraplugError
from loraplug.hookspecs import hookimpl
from loraplug.kinds import KindSpec
from loraplug.options import InputDir, InputFile, InputPath, Options, RecipePath
from loraplug.training.sinks import MetricSink

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "DataBundle",
    "ExportResult",
    "InputDir",
    "InputFile",
    "InputPath",
    "KindSpec",
    "LoraplugError",
    "MetricSink",
    "ModelBundle",
    "Options",
    "PreparedData",
    "Record",
    "RecipePath",
    "RunContext",
    "Sample",
    "StepResult",
    "__version__",
    "hookimpl",
]
