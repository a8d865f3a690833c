"""Option fields for peft's adapter types that every plugin offering them shares (not a kind: mix it in)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from loraplug import Options


class LokrSettings(Options):
    """What peft's ``LoKrConfig`` adds to LoHa's settings: ΔW = W₁ ⊗ (A₂B₂) · alpha/r.

    Mix it into a plugin's ``[adapter] kind = "lokr"`` options:
    ``class LokrOptions(LokrSettings, MyLycorisOptions)`` (this first, so its fields list last).
    """

    decompose_both: bool = Field(
        False, description="Also factor the small Kronecker matrix W₁ into rank-r factors."
    )
    decompose_factor: int = Field(
        -1,
        ge=-1,
        description="Split each dimension as near this factor as divides it; -1: near its square root.",
    )
    init: Literal["default", "lycoris"] = Field(
        "default",
        description="`default`: peft's (W₁ starts at zero); `lycoris`: LyCORIS' (the W₂ factor starts at zero).",
    )

    @field_validator("decompose_factor")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (near the square root) or a positive factor")
        return value
