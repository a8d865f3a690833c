"""The ``[optimizer]`` table of each optimizer kind: pydantic only, imported when a recipe is checked."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, PositiveFloat, PositiveInt

from loraplug import Options

#: The decay of a moving average: in [0, 1).
Beta = Annotated[float, Field(ge=0, lt=1)]


class AdamW8bitOptions(Options):
    """``train.optimizer = "adamw8bit"``: AdamW with 8-bit moments (bitsandbytes)."""

    betas: tuple[Beta, Beta] = Field(
        (0.9, 0.999), description="Decay rates of the moving averages of the gradient and its square."
    )
    eps: float = Field(1e-8, gt=0, le=1, description="Added to the denominator for numerical stability.")
    min_8bit_size: PositiveInt = Field(
        4096,
        description="Parameters with fewer elements keep 32-bit moments (bitsandbytes' default; small tensors gain nothing).",
    )

    def optional_libraries(self) -> tuple[str, ...]:
        """This kind imports bitsandbytes, which plain runs keep out (see loraplug.optional)."""
        return ("bitsandbytes",)


class LionOptions(Options):
    """``train.optimizer = "lion"``: Lion (lion-pytorch). Take train.lr 3–10× below AdamW's and
    train.weight_decay 3–10× above it: Lion's sign updates are larger."""

    betas: tuple[Beta, Beta] = Field(
        (0.9, 0.99),
        description="beta1 mixes the gradient into the update's sign; beta2 is the decay of the momentum it keeps.",
    )


class ProdigyOptions(Options):
    """``train.optimizer = "prodigy"``: Prodigy (prodigyopt), which estimates the step size itself.

    Keep ``train.lr`` at about 1.0: it multiplies Prodigy's estimate (0.5 halves every step), and the
    warmup and decay of ``train.schedule`` scale it as they would any lr.
    """

    betas: tuple[Beta, Beta] = Field((0.9, 0.999), description="Adam's moving-average decays.")
    beta3: Beta | None = Field(
        None,
        description="Decay of the step-size estimate's running sums (default: the square root of beta2).",
    )
    eps: float = Field(1e-8, gt=0, le=1, description="Added to the denominator for numerical stability.")
    decouple: bool = Field(
        True, description="Decoupled (AdamW-style) weight decay rather than L2 regularisation."
    )
    use_bias_correction: bool = Field(False, description="Adam's bias correction of the moments.")
    safeguard_warmup: bool = Field(
        False,
        description="Leave the lr out of the estimate's denominator: recommended with warmup (train.warmup_steps).",
    )
    d0: PositiveFloat = Field(1e-6, le=1, description="The initial step-size estimate.")
    d_coef: PositiveFloat = Field(
        1.0, le=100, description="Multiplies the estimate (below 1: more careful, above: bolder)."
    )
    growth_rate: PositiveFloat | None = Field(
        None, description="Cap on the estimate's growth per step, as a factor (default: no cap)."
    )


class AdafactorOptions(Options):
    """``train.optimizer = "adafactor"``: transformers' Adafactor with loraplug's lr and schedule
    (``relative_step`` off: ``train.lr`` and ``train.schedule`` drive the step size)."""

    eps: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] = Field(
        (1e-30, 1e-3), description="Regularisers of the squared gradient and of the parameter scale."
    )
    clip_threshold: PositiveFloat = Field(
        1.0, description="Threshold of the root-mean-square of the final update."
    )
    decay_rate: float = Field(
        -0.8, ge=-1, lt=0, description="Exponent of the running average of the squared gradient's decay."
    )
    beta1: Beta | None = Field(
        None, description="First-moment decay; None keeps no first moment (the smallest state)."
    )
    scale_parameter: bool = Field(
        False, description="Scale the lr by the root-mean-square of each parameter."
    )
