"""The values that travel between hooks.

They are plain dataclasses so a plugin author can read every field in one place. Fields that hold
torch objects are typed loosely (``Any``) because this module is on the CLI's start-up path and must
not import torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loraplug.data.report import DataReport

#: One sample as a data plugin produced it: a plain dict with at least an ``"id"`` (file:line,
#: image path, shard/key) so errors can name the sample. Text records carry ``"messages"`` (a list of
#: ``{"role", "content"}``); image records carry ``"image"`` and ``"caption"``.
Record = dict[str, Any]


@dataclass
class DataBundle:
    """What :func:`loraplug_load_data` returns: records, not tensors.

    Data plugins read and check files; the model's plugin turns records into tensors in
    :func:`loraplug_prepare_data`, so any data kind can feed any model kind that understands its
    records (a WebDataset stream of chat samples trains a causal LM).

    :param train: the training records: a sequence, or an iterable for streams.
    :param val: the validation records, if the recipe asked for a split.
    :param summary: counts shown to the user and written to ``run.json`` (``{"skipped lines": 2}``).
    :param report: set by the core after ``[data.clean]`` ran: what each filter removed. A model plugin
        passes the bundle to :func:`loraplug.data.token_limit` to apply the token-length filter.
    :param weights: set by the core from ``data.balance_by`` / ``data.weight_by``: one drawing weight
        per training record. A model plugin that drops samples must hand them on as
        ``PreparedData.sample_weights``, one per encoded sample, and must not pack samples together.
    :param final_summary: for streams, counts known only once training has read them (corrupt samples
        skipped); the core adds what it returns to the data summary in ``run.json`` when training ends.
    """

    train: Sequence[Record] | Iterable[Record]
    val: Sequence[Record] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    report: DataReport | None = None
    weights: Sequence[float] | None = None
    final_summary: Callable[[], dict[str, Any]] | None = field(default=None, repr=False)


@dataclass
class ModelBundle:
    """What :func:`loraplug_build_model` returns, and :func:`loraplug_wrap_adapter` returns again.

    :param kind: the model kind (``causal-lm``).
    :param module: the ``torch.nn.Module`` the loop trains and hands to accelerate.
    :param components: everything else the plugin needs later: tokenizer, VAE, noise scheduler…
    :param base: where the base weights came from: a hub id, a directory or a preset name.
    :param base_dir: the local directory holding the base weights, when there is one.
    :param lr_scales: learning-rate multipliers by parameter-name prefix, e.g. a text encoder
        trained at a tenth of the UNet's rate: ``{"text_encoder.": 0.1}``.
    """

    kind: str
    module: Any
    components: dict[str, Any] = field(default_factory=dict)
    base: str = ""
    base_dir: Path | None = None
    lr_scales: dict[str, float] = field(default_factory=dict)


@dataclass
class Batch:
    """One micro-batch, as a plugin's collate function returns it.

    :param inputs: tensors the loop moves to the device before :func:`loraplug_train_step`.
    :param num_targets: how many loss terms the batch holds (target tokens, or images). The loop sums
        it over the whole accumulated batch — across processes too — and divides the summed loss by
        that total, so accumulation gives exactly the update of one larger batch.
    :param num_tokens: non-padding units processed, for the throughput figure.
    :param sample_ids: the records in the batch, to name them when the loss turns NaN.
    """

    inputs: dict[str, Any]
    num_targets: int
    num_tokens: int
    sample_ids: list[str] = field(default_factory=list)


@dataclass
class PreparedData:
    """What :func:`loraplug_prepare_data` returns: datasets of encoded samples and how to batch them.

    :param train: encoded training samples (a sequence), or an iterable for streams.
    :param collate: turns a list of encoded samples into a :class:`Batch`.
    :param val: encoded validation samples.
    :param summary: counts to show (``{"truncated": 3}``).
    :param plan_batches: ``(epoch, seed, batch_size) -> list of index lists``: the global micro-batches
        of one epoch, when the plugin needs its own grouping (aspect-ratio buckets). ``None`` means a
        seeded shuffle cut into equal micro-batches. Each global micro-batch holds ``batch_size ×
        processes`` indices; the loop gives each process its slice.
    :param sample_weights: a drawing weight per training sample: micro-batches are then drawn with
        replacement in proportion to them (``data.balance_by``). ``None``: every sample once per epoch.
    :param unit: what a batch's ``num_tokens`` counts, for the throughput shown (``"tokens"``,
        ``"images"``).
    """

    train: Sequence[Any] | Iterable[Any]
    collate: Callable[[list[Any]], Batch]
    val: Sequence[Any] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    plan_batches: Callable[[int, int, int], list[list[int]]] | None = None
    sample_weights: Sequence[float] | None = None
    unit: str = "tokens"


@dataclass
class StepResult:
    """What :func:`loraplug_train_step` returns.

    :param loss_sum: a scalar tensor: the loss *summed* over the batch's targets (not averaged).
    :param num_targets: how many targets that sum covers; equals the batch's ``num_targets``.
    """

    loss_sum: Any
    num_targets: int


@dataclass
class ExportResult:
    """What :func:`loraplug_export` returns besides the files it wrote.

    :param files: the files written, relative to the export directory (default: every file there).
    :param figures: measured numbers for the manifest (parity, drift, size ratios).
    :param notes: sentences for the user (``"dequantized to bf16 before merging"``).
    :param loads_with: how a person loads it, for the manifest and the run summary.
    """

    files: list[str] | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    loads_with: str = ""


@dataclass
class Sample:
    """One generated sample for :func:`loraplug_generate`: text, or an image file written by the plugin."""

    prompt: str
    text: str | None = None
    image_path: Path | None = None
