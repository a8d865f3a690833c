"""The options of every kind loraplug-csv serves: pydantic only, imported when a recipe is checked."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, field_validator

from loraplug import InputFile, Options
from loraplug.toolkit import pretrained_source

#: The tiny models ``model.pretrained`` may name; built on first use (classifier.py).
PRESETS = ("tiny-classifier",)


class CsvOptions(Options):
    """``[data] kind = "csv"``: prompt/response pairs, one per row."""

    path: InputFile = Field(description="CSV file with a header row.")
    prompt_column: str = Field("prompt", description="Column holding the prompt.")
    response_column: str = Field("response", description="Column holding the response.")
    val_fraction: float = Field(
        0.0, ge=0, lt=1, description="Hold out this fraction of the rows for validation (seeded)."
    )


class LabelledCsvOptions(Options):
    """``[data] kind = "csv-labels"``: a text and its label, one per row."""

    path: InputFile = Field(description="CSV file with a header row.")
    text_column: str = Field("text", description="Column holding the text.")
    label_column: str = Field("label", description="Column holding the label.")
    val_fraction: float = Field(
        0.0, ge=0, lt=1, description="Hold out this fraction of the rows for validation (seeded)."
    )


class ClassifierOptions(Options):
    """``[model] kind = "text-classifier"``: a transformers sequence classifier."""

    pretrained: str = Field(description="Hub id, local directory, or preset `tiny-classifier`.")
    labels: tuple[str, ...] = Field(
        min_length=2, description="The labels, in the order of the classifier's outputs."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; `auto` keeps the checkpoint's."
    )
    max_length: PositiveInt = Field(
        128, le=8192, description="Longest text in tokens; longer ones are truncated."
    )

    _pretrained = field_validator("pretrained")(pretrained_source(PRESETS))

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(labels)) != len(labels):
            raise ValueError("each label must appear once")
        return labels


class LoraOptions(Options):
    """``[adapter] kind = "lora"`` for text classifiers (peft); the classification head trains in full."""

    r: PositiveInt = Field(8, le=1024, description="LoRA rank.")
    alpha: PositiveInt = Field(16, le=4096, description="LoRA alpha; the update is scaled by alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "v_proj"), min_length=1, description="Names of the linear layers to adapt."
    )
