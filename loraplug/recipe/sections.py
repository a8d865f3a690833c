"""The recipe sections the core owns: ``[run]``, ``[train]`` and ``[eval]``.

``[data]``, ``[model]``, ``[adapter]`` and ``[[export]]`` belong to plugins: their ``kind`` picks the
plugin and the rest is checked against that kind's options model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PlainValidator, PositiveFloat, PositiveInt, model_validator

from loraplug.options import MAX_SEED, DirName, LearningRate, Options
from loraplug.safety import OutputDir


def _batch_size(value: object) -> int | Literal["auto"]:
    # One message for both branches (a plain union would report two problems for one key).
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError('Input should be a valid integer ≥ 1, or "auto"')
    return value


BatchSize = Annotated[int | Literal["auto"], PlainValidator(_batch_size)]
#: An Adam beta: the decay of a moving average, so in [0, 1).
Beta = Annotated[float, Field(ge=0, lt=1)]


class RunSection(Options):
    """``[run]``: what the run is called, where it goes, its seed."""

    name: DirName = Field(
        "",
        description="Run name; the run directory is output_dir/name. One directory name: letters, digits, `_`, `-`, "
        "`.`, `+` and inner spaces (no `/`, no `..`). Default: the recipe file's name.",
    )
    output_dir: OutputDir = Field(
        Path("runs"), description="Parent directory of run directories, relative to the current directory."
    )
    seed: int = Field(
        42,
        ge=0,
        le=MAX_SEED,
        description="The one seed for Python, NumPy, torch, data order and adapter initialisation.",
    )


class TrainSection(Options):
    """``[train]``: the optimiser, schedule, batch and precision."""

    optimizer: str = Field(
        "adamw",
        description="The optimizer kind: the built-in `adamw`, or one an installed plugin serves (`loraplug plugins list` "
        "and `loraplug recipe keys` list them). Its own options go in the [optimizer] table.",
    )
    objective: str = Field(
        "sft",
        description="The training objective kind: `sft` (the model kind's own loss, the default), or one an installed "
        "plugin serves for the model kind (the causal LM's `dpo` and `orpo` train on preference pairs; see "
        "docs/preference.md). Its own options go in the [objective] table.",
    )
    lr: LearningRate = Field(
        2e-4,
        description="Peak learning rate (AdamW trains LoRA at 1e-5 to 1e-3; an optimizer kind that wants another scale "
        "says so in its summary).",
    )
    betas: tuple[Beta, Beta] | None = Field(
        None,
        description="Deprecated: write `betas` in [optimizer] (AdamW's betas; still read for an optimizer kind with a "
        "`betas` option).",
    )
    eps: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Deprecated: write `eps` in [optimizer] (AdamW's epsilon; still read for an optimizer kind with an "
        "`eps` option).",
    )
    weight_decay: float = Field(
        0.0,
        ge=0,
        le=10,
        description="Decoupled weight decay, for every optimizer kind; never applied to biases and norm weights.",
    )
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "cosine", description="Learning-rate schedule after warmup."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warmup from 0 over this many optimizer steps.")
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="Warmup as a fraction of all steps (used when warmup_steps is 0)."
    )
    min_lr_ratio: float = Field(
        0.0, ge=0, le=1, description="Floor of the linear/cosine decay, as a fraction of lr."
    )
    max_steps: PositiveInt | None = Field(
        None,
        description="Optimizer steps to train; set this or epochs, not both (a streamed dataset needs it).",
    )
    epochs: PositiveFloat | None = Field(
        None, description="Passes over the training data (default 1 when max_steps is unset)."
    )
    batch_size: BatchSize = Field(
        8,
        description='Micro-batch size per process (rows when samples are packed). "auto": the largest divisor of '
        "effective_batch_size whose worst-case micro-batch fits in memory_fraction of the device's memory; "
        "grad_accum_steps then makes up the rest.",
    )
    grad_accum_steps: PositiveInt = Field(1, description="Micro-batches accumulated per optimizer step.")
    effective_batch_size: PositiveInt | None = Field(
        None,
        description='With batch_size = "auto": samples (rows) per optimizer step per process, kept exactly through '
        "accumulation. Default: 8 × grad_accum_steps.",
    )
    memory_fraction: float = Field(
        0.7,
        gt=0,
        le=1,
        description='With batch_size = "auto": the share of CUDA memory (on CPU: of the RAM available at start) a micro-batch may use.',
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="Autocast precision of the forward pass."
    )
    max_grad_norm: float = Field(
        1.0, ge=0, description="Clip the global gradient norm to this; 0 disables clipping."
    )
    log_every_n_steps: PositiveInt = Field(
        10, description="Log loss, lr and throughput every this many steps."
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    save_every_n_steps: PositiveInt | None = Field(
        None, description="Write a resumable checkpoint every this many steps (and on SIGINT/SIGTERM)."
    )
    keep_last: PositiveInt = Field(
        2, description="Step checkpoints kept; older ones are deleted (the best is kept apart)."
    )
    on_nan: Literal["stop", "skip"] = Field(
        "stop",
        description="A NaN/infinite loss stops the run (last good checkpoint kept), or skips that step's update.",
    )

    @model_validator(mode="after")
    def _one_length(self) -> TrainSection:
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError("set either max_steps or epochs, not both")
        if self.effective_batch_size is not None and self.batch_size != "auto":
            raise ValueError(
                'effective_batch_size is for batch_size = "auto"; with a fixed batch_size the effective batch is batch_size × grad_accum_steps'
            )
        return self

    @property
    def auto_target(self) -> int:
        """The effective batch per process that ``batch_size = "auto"`` keeps."""
        return self.effective_batch_size or 8 * self.grad_accum_steps

    @property
    def micro_batch_size(self) -> int:
        """``batch_size`` as training uses it: a run measures ``"auto"`` (``resolve_batch_size``) before it trains."""
        if self.batch_size == "auto":
            raise RuntimeError('batch_size = "auto" is read before resolve_batch_size has measured it')
        return self.batch_size


#: The deprecated ``[train]`` keys that are AdamW's options: they move into ``[optimizer]`` when read.
DEPRECATED_TRAIN_KEYS = ("betas", "eps")


class AdamWOptions(Options):
    """``[optimizer]`` with ``train.optimizer = "adamw"``: torch.optim.AdamW, fused into one kernel on CUDA."""

    betas: tuple[Beta, Beta] = Field(
        (0.9, 0.999), description="Decay rates of the moving averages of the gradient and its square."
    )
    eps: float = Field(1e-8, gt=0, le=1, description="Added to the denominator for numerical stability.")


class EvalSection(Options):
    """``[eval]``: validation loss and samples during training."""

    every_n_steps: PositiveInt | None = Field(
        None,
        description="Compute validation loss every this many steps (and at the end). Default: only at the end.",
    )
    max_batches: PositiveInt | None = Field(None, description="Cap on validation batches per evaluation.")
    sample_prompts: list[str] = Field(
        default_factory=list, description="Prompts sampled before training, periodically and after."
    )
    sample_every_n_steps: PositiveInt | None = Field(None, description="Also sample every this many steps.")
    metrics: list[str] = Field(
        default_factory=list,
        description="Metrics besides val_loss, by name; each is served by an installed plugin for the model kind and "
        "declares whether higher or lower is better.",
    )
    generate_samples: PositiveInt = Field(
        32, description="Validation samples generated for generation metrics."
    )
    monitor: str = Field(
        "val_loss", description="The score that picks the best checkpoint and drives early stopping."
    )
    monitor_mode: Literal["auto", "min", "max"] = Field(
        "auto",
        description="Whether lower or higher is better; auto: as the metric declares (val_loss: lower).",
    )
    early_stopping_patience: PositiveInt | None = Field(
        None, description="Stop after this many evaluations without improvement of `monitor`."
    )
    early_stopping_min_delta: float = Field(
        0.0, ge=0, description="The smallest change that counts as an improvement."
    )
    use_best: bool = Field(True, description="Export the best evaluated weights rather than the last ones.")
