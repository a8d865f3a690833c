"""The values that travel between hooks.

They are plain dataclasses so a plugin author can read every field in one place. Fields that hold
torch objects are typed loosely (``Any``) because this module is on the CLI's start-up path and must
not import torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from loraplug.data.report import DataReport

#: One sample as a data plugin produced it: a plain dict with at least an ``"id"`` (file:line,
#: image path, shard/key) so errors can name the sample. Text records carry ``"messages"`` (a list of
#: ``{"role", "content"}``) or ``"text"``; image records carry ``"image"`` and ``"caption"``. Whatever
#: else a record holds, its text — what cleaning filters read — is what :func:`record_text` returns.
Record = dict[str, Any]

#: The fields :func:`record_text` reads, in order. A data kind whose records have text puts it in one
#: of them; a record with none of them has no text, and a text filter asked to read it is an error.
TEXT_FIELDS = ("text", "messages", "caption")


def record_text(record: Record) -> str | None:
    """The text of a record, the one way every cleaning filter reads it; ``None`` when it has none.

    ``"text"`` (a string) as it is; ``"messages"`` (chat turns) as their contents, one per line;
    ``"caption"`` (a string) as it is — the first of :data:`TEXT_FIELDS` the record holds.
    """
    text = record.get("text")
    if isinstance(text, str):
        return text
    messages = record.get("messages")
    if isinstance(messages, list):
        return "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    caption = record.get("caption")
    return caption if isinstance(caption, str) else None


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
        passes the bundle to :func:`loraplug.toolkit.token_limit` to apply the token-length filter.
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
    :param metrics: more figures *summed* over the same targets (a preference objective's reward
        accuracy and margin), numbers or detached scalar tensors. The loop sums each over the steps of a
        logging window, across processes, and logs it beside the loss as its mean per target.
    """

    loss_sum: Any
    num_targets: int
    metrics: dict[str, Any] = field(default_factory=dict)


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


#: The types of sample output every sink renders: ``metrics`` sinks, TensorBoard, W&B and report.html.
ArtifactType = Literal["text", "image", "audio", "table"]
ARTIFACT_TYPES: tuple[ArtifactType, ...] = ("text", "image", "audio", "table")


@dataclass(frozen=True)
class Artifact:
    """One typed output of a generated sample; sinks render it by its ``type``, whatever the modality.

    :param type: ``"text"``: ``value`` is a string. ``"image"``: a path to a PNG or JPEG file.
        ``"audio"``: a path to a WAV file. ``"table"``: a list of rows, each a dict of column → number
        or string (the first row's keys are the columns).
    :param value: as ``type`` says. Files are written by the plugin into the ``out_dir`` that
        :func:`loraplug_generate` receives (inside the run directory).
    :param caption: an optional line shown with it (what the image or sound is).
    """

    type: ArtifactType
    value: Any
    caption: str = ""

    def __post_init__(self) -> None:
        if self.type not in ARTIFACT_TYPES:
            raise ValueError(f"Artifact type {self.type!r} is not one of {', '.join(ARTIFACT_TYPES)}")
        # Annotated: mypy would join these classes into their metaclass (ABCMeta) and misread the isinstance below.
        expected: type[object] = {"text": str, "image": Path, "audio": Path, "table": list}[self.type]
        value = Path(self.value) if expected is Path and isinstance(self.value, str) else self.value
        if not isinstance(value, expected):
            raise ValueError(
                f"A {self.type} artifact's value must be a {expected.__name__}, not {type(self.value).__name__}"
            )
        object.__setattr__(self, "value", value)

    def as_json(self, run_dir: Path) -> dict[str, Any]:
        """The artifact in ``samples/step-N.json``: files as paths relative to ``run_dir``."""
        out: dict[str, Any] = {"type": self.type}
        if isinstance(self.value, Path):
            out["path"] = _relative(self.value, run_dir)
        elif self.type == "table":
            out["rows"] = self.value
        else:
            out["text"] = self.value
        if self.caption:
            out["caption"] = self.caption
        return out


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


@dataclass
class Sample:
    """One generated sample for :func:`loraplug_generate`: the prompt and its typed outputs.

    ``text`` and ``image_path`` are shorthands for the two commonest outputs; anything else (audio, a
    table, several images) goes in ``artifacts``. :meth:`outputs` lists them all, in that order.

    :param prompt: the prompt it was generated from.
    :param text: generated text.
    :param image_path: an image file the plugin wrote.
    :param artifacts: further typed outputs (:class:`Artifact`).
    """

    prompt: str
    text: str | None = None
    image_path: Path | None = None
    artifacts: list[Artifact] = field(default_factory=list)

    def outputs(self) -> list[Artifact]:
        """Every output of the sample as a typed :class:`Artifact`."""
        found = [] if self.text is None else [Artifact("text", self.text)]
        if self.image_path is not None:
            found.append(Artifact("image", Path(self.image_path)))
        return found + list(self.artifacts)

    def as_json(self, run_dir: Path) -> dict[str, Any]:
        """The sample in ``samples/step-N.json``: ``prompt``, ``text``, ``image`` (as before) and ``outputs``."""
        return {
            "prompt": self.prompt,
            "text": self.text,
            "image": _relative(Path(self.image_path), run_dir) if self.image_path else None,
            "outputs": [artifact.as_json(run_dir) for artifact in self.outputs()],
        }
