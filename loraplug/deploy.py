"""What a model kind hands exporters: its trained model merged into one module, and how to drive it.

An exporter (``onnx``, ``int8``…) never imports the plugin of the model it exports. It asks the run
for the model's :class:`Deployable` — ``ctx.deployable(model)``, answered once per run by the plugin
serving ``model.kind`` through :func:`~loraplug.hookspecs.loraplug_deployable` — and uses only that:
the merged module, example inputs, a probe that turns the module's outputs into one comparable tensor,
and how to save the tokenizer or config beside it. So a third party's model kind is exportable the
day it is installed, and a LoRA update is merged one way, once, for every export of a run.

No torch here: the fields that hold tensors and modules are typed ``Any`` (this module is imported by
``loraplug`` itself, on the CLI's start-up path).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraplug.errors import LoraplugError

if TYPE_CHECKING:
    from loraplug.bundles import Batch

#: ``(module, inputs) -> tensor``: run ``module`` on ``inputs`` (by ``forward`` argument name) and return
#: the one float tensor its output is compared by (logits, a noise prediction, a regression).
Probe = Callable[[Any, dict[str, Any]], Any]


@dataclass(frozen=True)
class MergeCheck:
    """The merged module against the trained model, measured once, when the deployable is built.

    Each export decides whether to hold it (:meth:`verify`); none measures it again.

    :param difference: the largest absolute difference of the two models' probe outputs.
    :param tolerance: the default limit: :func:`loraplug.toolkit.parity_tolerance` of the dtype the
        trained model computes in (a bfloat16 base rounds its outputs far more than float32).
    :param figures: what to write in an export's manifest (the difference under the plugin's name for
        it, e.g. ``max_abs_logit_diff_vs_trained``, and anything measured beside it).
    :param subject: what differs, for the error: ``"The merged model's logits"``.
    :param against: what it was compared with, for the error: ``"the trained model's"``.
    :param fix: how a user gets past a failed check.
    """

    difference: float
    tolerance: float
    figures: dict[str, float] = field(default_factory=dict)
    subject: str = "The merged model's outputs"
    against: str = "the trained model's"
    fix: str = "Raise the export's `tolerance` if the difference is acceptable, or report it to the model plugin's authors"

    def verify(self, tolerance: float | None = None) -> dict[str, float]:
        """The figures with the limit applied (``tolerance``, else the default); raise when over it."""
        limit = self.tolerance if tolerance is None else tolerance
        if not self.difference <= limit:  # NaN fails too
            raise LoraplugError(
                f"{self.subject} differ by {self.difference:.2e} (tolerance {limit:g}) from {self.against}",
                fix=self.fix,
            )
        return {**self.figures, "tolerance": limit}


@dataclass
class Deployable:
    """What :func:`~loraplug.hookspecs.loraplug_deployable` returns: the trained model as one module to deploy.

    Exporters share it (it is built once per run): they must not modify ``module`` — copy it first
    (``copy.deepcopy``) to quantize it, cast it or move it to a GPU.

    :param module: the trained model with its adapter merged in: a ``torch.nn.Module`` in float32, on
        the CPU, in eval mode. The trained model itself is left as it was.
    :param inputs: example inputs by ``forward`` argument name, in ``forward``'s order: the shapes a
        graph exporter traces with.
    :param check_inputs: inputs of other shapes than ``inputs`` (another batch size, length, side; a
        padded row), for checking that an exported graph kept its axes dynamic.
    :param probe: ``(module, inputs) -> tensor``: runs a module (this one, a quantized copy of it, the
        trained model) on inputs and returns the one float tensor its output is compared by.
    :param output: the name of that tensor (``"logits"``, ``"noise_pred"``), e.g. a graph's output name.
    :param what: the model, for messages (``"the merged llama model"``).
    :param dynamic_shapes: ``torch.export`` dims per input name (``{"input_ids": {0: batch, 1: sequence}}``);
        an input not named is static.
    :param value_name: what one output value is, for figure names (``"logit"`` makes
        ``max_abs_logit_diff``); empty for a plain ``max_abs_diff``.
    :param dtype: the dtype of the trained model's weights (what a deployment in the run's precision uses).
    :param compute_dtype: the dtype the trained model computes in (a quantized base's compute dtype).
    :param save_beside: writes what a user needs beside the weights into a directory: tokenizer,
        processor, the model's config. An export that writes a file of the same name afterwards wins.
    :param from_pretrained: for models saved with ``save_pretrained``: the loader that reads such a
        directory back, taking ``from_pretrained``'s keyword arguments (``quantization_config``,
        ``dtype``, ``device_map``). ``None``: the module has no such format.
    :param loads_with: how a user loads ``module`` saved by its ``save_pretrained``.
    :param batch_outputs: ``(module, batch) -> tensor``: a module's comparable outputs on a batch of the
        run's prepared data (:meth:`loraplug.RunContext.prepared_data`), padding left out, on the CPU.
        ``None``: exporters measure on ``check_inputs`` instead.
    :param score: ``(module, batches) -> {name: value}``: the model's own quality figures over batches of
        the run's prepared data (``{"perplexity": 12.3}``), to compare a quantized copy with.
    :param merge_check: the merged module against the trained model; ``None``: nothing was merged.
    :param export_unverified: ``None`` when the plugin vouches that ``module`` exports as a traced graph;
        else what it has not verified, as a phrase (``"the model family 'bloom' (BloomForCausalLM)"``).
    :param notes: what a user should know about how the module was made.
    """

    module: Any
    inputs: dict[str, Any]
    check_inputs: dict[str, Any]
    probe: Probe
    output: str
    what: str
    dynamic_shapes: dict[str, dict[int, Any]] = field(default_factory=dict)
    value_name: str = ""
    dtype: str = "float32"
    compute_dtype: str = "float32"
    save_beside: Callable[[Path], None] | None = None
    from_pretrained: Callable[..., Any] | None = None
    loads_with: str = ""
    batch_outputs: Callable[[Any, Batch], Any] | None = None
    score: Callable[[Any, Sequence[Batch]], dict[str, float]] | None = None
    merge_check: MergeCheck | None = None
    export_unverified: str | None = None
    notes: list[str] = field(default_factory=list)

    def figure(self, *parts: str) -> str:
        """A figure's name with :attr:`value_name` in it: ``figure("max_abs", "diff")`` → ``max_abs_logit_diff``."""
        return "_".join(p for p in (parts[0], self.value_name, *parts[1:]) if p)

    def verify_merge(self, tolerance: float | None = None) -> dict[str, float]:
        """:meth:`MergeCheck.verify` of :attr:`merge_check` (no figures when nothing was merged)."""
        return {} if self.merge_check is None else self.merge_check.verify(tolerance)

    def save_files_beside(self, directory: Path) -> None:
        """Run :attr:`save_beside` on ``directory`` when the model has anything to save there."""
        if self.save_beside is not None:
            self.save_beside(directory)
