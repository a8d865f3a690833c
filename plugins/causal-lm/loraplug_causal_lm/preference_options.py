"""Option models of the preference objectives and the pairs data kind; imported when a recipe is checked (pydantic only)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from loraplug import InputFile, Options


class PairsOptions(Options):
    """``[data] kind = "pairs"``: preference pairs for ``train.objective = "dpo"`` or ``"orpo"``."""

    path: InputFile = Field(
        description='JSONL file: {"prompt", "chosen", "rejected"} per line, or the chat form {"messages": [prompt '
        'turns], "chosen", "rejected"} (chosen/rejected: a string, an assistant turn or a list of them).'
    )
    val_path: InputFile | None = Field(None, description="A separate validation file in the same format.")
    val_fraction: float = Field(
        0.0, ge=0, lt=1, description="Hold out this fraction of `path` for validation (seeded)."
    )
    on_error: Literal["error", "skip"] = Field(
        "error", description="A malformed line stops the run, or is skipped and counted."
    )


class DpoOptions(Options):
    """``[objective]`` with ``train.objective = "dpo"``: Direct Preference Optimization."""

    beta: float = Field(
        0.1, gt=0, description="β: how far the policy may move from the reference (higher: stays closer)."
    )
    loss_type: Literal["sigmoid", "ipo"] = Field(
        "sigmoid",
        description="`sigmoid`: DPO's −log σ(βΔ); `ipo`: IPO's squared loss (Δ per completion token − 1/(2β))².",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="ε of conservative DPO (sigmoid only): the share of pairs assumed mislabelled, "
        "−(1−ε)·log σ(βΔ) − ε·log σ(−βΔ).",
    )
    precompute_reference: bool = Field(
        False,
        description="Compute the reference log-probabilities once before training and keep them with the samples, "
        "instead of a forward with the adapter switched off at every step (always on when the adapter starts from "
        "an earlier one, adapter.init_from: that adapter as it was is the reference).",
    )


class OrpoOptions(Options):
    """``[objective]`` with ``train.objective = "orpo"``: Odds Ratio Preference Optimization (no reference)."""

    odds_ratio_weight: float = Field(
        0.1, gt=0, description="λ: the weight of the odds-ratio term beside the chosen side's SFT loss."
    )
