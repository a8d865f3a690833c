"""Option models of every kind this plugin serves; imported when a recipe is checked, so pydantic only."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, PositiveInt, field_validator

from loraplug import InputFile, Options
from loraplug import NoOptions as NoOptions  # named by path in plugin.py
from loraplug.toolkit import pretrained_source

#: The tiny presets ``model.pretrained`` may name (presets.py builds them).
PRESETS = ("tiny-llama-classifier", "tiny-gpt2-classifier")
#: The data kinds whose files this plugin reads itself, so it can read their labels (and check them).
DATA_KINDS = ("labelled-jsonl", "labelled-csv")

Dtype = Literal["auto", "float32", "bfloat16", "float16"]


class LabelledDataOptions(Options):
    """What the labelled JSONL and CSV kinds share."""

    path: InputFile = Field(description="The training file.")
    val_path: InputFile | None = Field(None, description="A separate validation file in the same format.")
    val_fraction: float = Field(
        0.0, ge=0, lt=1, description="Hold out this fraction of `path` for validation (seeded)."
    )

    def files(self) -> list[Path]:
        return [self.path] + ([self.val_path] if self.val_path is not None else [])


class LabelledJsonlOptions(LabelledDataOptions):
    """``[data] kind = "labelled-jsonl"``: one ``{"text": ..., "label": ...}`` object per line."""

    path: InputFile = Field(description="JSONL file: one object with a text and a label per line.")
    text_field: str = Field("text", description="The key holding the text.")
    label_field: str = Field("label", description="The key holding the label (a string or an integer).")


class LabelledCsvOptions(LabelledDataOptions):
    """``[data] kind = "labelled-csv"``: a text and its label per row, under a header row."""

    path: InputFile = Field(description="CSV file with a header row.")
    text_column: str = Field("text", description="The column holding the text.")
    label_column: str = Field("label", description="The column holding the label.")
    delimiter: str = Field(",", min_length=1, max_length=1, description="The field separator.")


class SequenceClassifierOptions(Options):
    """``[model] kind = "sequence-classifier"``: ``AutoModelForSequenceClassification`` on a (causal-LM) base."""

    pretrained: str = Field(
        description="Hub id, local directory, or preset `tiny-llama-classifier` / `tiny-gpt2-classifier`."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: Dtype = Field("auto", description="Weights dtype; `auto` keeps the checkpoint's.")
    trust_remote_code: bool = Field(False, description="Run the model repository's own Python code.")
    labels: list[str] | None = Field(
        None,
        description="The class names, in the order of the classifier's outputs. Default: read from the data "
        "(labelled-jsonl / labelled-csv), sorted; another data kind must name them. A sample whose label is "
        "not one of them is an error naming it (checked by `recipe check` for local files).",
    )
    max_length: PositiveInt = Field(
        256, description="Tokens per text; longer texts are truncated (their end is cut) and counted."
    )
    class_weights: Literal["none", "balanced"] | dict[str, float] = Field(
        "none",
        description="Weights of the classes in the loss: `balanced` gives class c the weight n / (classes × n_c) "
        "from the training labels, a table names a weight per label (missing ones weigh 1). The other way to "
        'handle imbalance is `data.balance_by = "label"` (weighted sampling); see docs/classification.md.',
    )

    _pretrained = field_validator("pretrained")(pretrained_source(PRESETS))

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: list[str] | None) -> list[str] | None:
        if labels is None:
            return None
        if len(labels) < 2:
            raise ValueError("a classifier needs at least two labels")
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"each label must appear once; repeated: {', '.join(repeated)}")
        return labels

    @field_validator("class_weights")
    @classmethod
    def _positive(cls, weights: str | dict[str, float]) -> str | dict[str, float]:
        if isinstance(weights, dict) and any(not w > 0 for w in weights.values()):
            raise ValueError("every class weight must be a number > 0")
        return weights

    def check_data(self, data_kind: str, data: BaseModel) -> list[str]:
        """``recipe check``'s look at the data: the local files' labels against ``labels``.

        Called by the core with the checked ``[data]`` options (docs/plugins.md: "When a model kind must know
        something of the data").
        """
        from loraplug_text_classification.labels import check_recipe_labels

        return check_recipe_labels(self, data_kind, data)


class LoraOptions(Options):
    """``[adapter] kind = "lora"`` for sequence classifiers; the classification head trains in full beside it."""

    r: PositiveInt = Field(8, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; the update is scaled by alpha/r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="Module names to adapt, or `all-linear` (every linear layer but the classification head).",
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="More modules trained in full and saved with the adapter (the head always is).",
    )


class PeftExportOptions(Options):
    """``[[export]] kind = "peft"`` of a sequence classifier."""

    check_parity: bool = Field(
        True,
        description="Load the written adapter onto the base with peft and compare its logits with the trained model's.",
    )
    tolerance: float | None = Field(
        None, gt=0, description="Largest logit difference accepted; default by the trained model's dtype."
    )


class MergedExportOptions(Options):
    """``[[export]] kind = "merged"`` of a sequence classifier."""

    dtype: Dtype = Field("auto", description="Dtype of the saved weights; the merge is done in float32.")
    check_parity: bool = Field(
        True, description="Load the written model back and compare its logits with the trained model's."
    )
    tolerance: float | None = Field(
        None, gt=0, description="Largest logit difference accepted; default by the saved dtype."
    )
