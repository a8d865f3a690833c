"""Options of the quantized export kinds; imported at start-up, so pydantic only."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, PositiveInt, model_validator

from loraplug import Options
from loraplug.toolkit import BITSANDBYTES_INSTALL, TORCHAO_INSTALL, require_package


class QuantExportOptions(Options):
    """What every quantized export shares: how many validation samples its figures are measured on."""

    max_samples: PositiveInt = Field(
        32,
        description="Validation samples the output drift and the model's scores (a causal LM's perplexity) are "
        "measured on (the first N).",
    )


class BnbExportOptions(QuantExportOptions):
    @model_validator(mode="after")
    def _needs_bitsandbytes(self) -> Self:
        require_package("bitsandbytes", "this export", BITSANDBYTES_INSTALL)
        return self

    def optional_libraries(self) -> tuple[str, ...]:
        """What a run with this export imports of the libraries loraplug keeps out of plain runs."""
        return ("bitsandbytes",)


class Bnb8bitExportOptions(BnbExportOptions):
    """``[[export]] kind = "bnb-8bit"``: LLM.int8 through bitsandbytes."""

    threshold: float = Field(
        6.0,
        ge=0,
        description="LLM.int8 outlier threshold: activations above it are multiplied in 16 bits (`llm_int8_threshold`).",
    )


class Bnb4bitExportOptions(BnbExportOptions):
    """``[[export]] kind = "bnb-4bit"``: 4-bit weights through bitsandbytes."""

    quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit data type: NormalFloat (`nf4`) or float (`fp4`)."
    )
    double_quant: bool = Field(
        True, description="Quantize the quantization constants too (about 0.4 bits per weight less)."
    )
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="dtype the 4-bit layers compute in; `auto`: the run's compute dtype (`model.dtype`, bfloat16 on a GPU that has it, else float32).",
    )


class Int8ExportOptions(QuantExportOptions):
    """``[[export]] kind = "int8"``: int8 weight-only through torchao (activations stay in float), for any model
    kind: through ``from_pretrained`` for models saved that way, else on the merged module's linear layers."""

    @model_validator(mode="after")
    def _needs_torchao(self) -> Self:
        require_package("torchao", "this export", TORCHAO_INSTALL)
        return self

    def optional_libraries(self) -> tuple[str, ...]:
        """What a run with this export imports of the libraries loraplug keeps out of plain runs."""
        return ("torchao",)
