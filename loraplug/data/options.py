"""The core's own keys in ``[data]``: cleaning (``[data.clean]``) and weighted sampling.

``[data]`` belongs to the data kind's plugin, except for the keys named here: the core takes them
out of the table before the plugin's options are checked, so every loader gets cleaning and
balanced sampling without declaring them. A data plugin must not use these names for its own keys.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field, PositiveInt, model_validator

from loraplug.options import Options


def _regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from exc
    return pattern


Regex = Annotated[str, AfterValidator(_regex)]


class CleanOptions(Options):
    """``[data.clean]``: filters applied to the records a data plugin loaded, before any model loads.

    Filters run in the order of the fields below; a record removed by one is not seen by the next.
    Validation records are cleaned the same way, and the deduplication filters also remove training
    records that duplicate a validation record (so the validation loss is not measured on trained text).
    """

    drop_empty_responses: bool = Field(
        True,
        description="Drop chat samples with an empty or whitespace-only assistant turn (they teach the model to say nothing).",
    )
    include: list[Regex] = Field(
        default_factory=list,
        description="Keep only samples whose text matches at least one of these regular expressions (Python `re.search`).",
    )
    exclude: list[Regex] = Field(
        default_factory=list, description="Drop samples whose text matches any of these regular expressions."
    )
    min_chars: int | None = Field(
        None,
        ge=0,
        description="Drop samples with fewer characters (of the sample's text: all messages' contents, the text or the caption).",
    )
    max_chars: PositiveInt | None = Field(None, description="Drop samples with more characters.")
    min_tokens: int | None = Field(
        None,
        ge=0,
        description="Drop samples with fewer tokens, counted by the model's tokenizer with its chat template (applied by the model's plugin).",
    )
    max_tokens: PositiveInt | None = Field(
        None,
        description="Drop samples with more tokens, counted before truncation to model.max_length (applied by the model's plugin).",
    )
    min_resolution: PositiveInt | None = Field(
        None, description="Drop images whose shorter side has fewer pixels."
    )
    exact_dedup: bool = Field(
        True,
        description="Drop samples whose normalised text (NFKC, case-folded, whitespace collapsed; chat turns with their roles) was "
        "seen before; samples with neither text nor image: all fields but `id` equal. Image samples are left to image_dedup.",
    )
    near_dedup_threshold: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Drop text samples whose estimated Jaccard similarity to an earlier one is at least this (MinHash LSH; 0.8 is a common choice).",
    )
    near_dedup_ngram: PositiveInt = Field(
        5, description="Character n-gram size of the near-duplicate shingles."
    )
    near_dedup_num_perm: int = Field(
        128, ge=16, le=1024, description="MinHash permutations: more is more exact and slower."
    )
    image_dedup_distance: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Drop images whose perceptual hash (imagehash.phash, 64 bits) is within this Hamming distance of an earlier image's; 0 = identical hashes.",
    )
    filters: list[dict[str, Any]] = Field(
        default_factory=list,
        description="More filters, as [[data.clean.filters]] tables: each names a filter `kind` (`loraplug plugins list` "
        "shows them) and its options. They run after the checks above and before deduplication, in the order listed.",
    )
    examples: int = Field(3, ge=0, le=50, description="Removed samples shown per filter in the report.")

    def optional_libraries(self) -> tuple[str, ...]:
        """datasketch's MinHash LSH and imagehash's phash import scipy (see loraplug.optional)."""
        return (
            ("scipy",)
            if self.near_dedup_threshold is not None or self.image_dedup_distance is not None
            else ()
        )

    @model_validator(mode="after")
    def _ranges(self) -> CleanOptions:
        for low, high in (("min_chars", "max_chars"), ("min_tokens", "max_tokens")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{low} ({lo}) is larger than {high} ({hi})")
        return self


class DataCoreOptions(Options):
    """The keys of ``[data]`` the core owns, whatever the data kind."""

    clean: CleanOptions = Field(
        default_factory=CleanOptions,
        description="Cleaning filters, as the table [data.clean]; see the [data.clean] keys.",
    )
    balance_by: str | None = Field(
        None,
        description="A record field holding a class label: draw training samples so that every class is seen equally often.",
    )
    weight_by: str | None = Field(
        None,
        description="A record field holding a number: draw each training sample with probability proportional to it.",
    )

    @model_validator(mode="after")
    def _one_sampler(self) -> DataCoreOptions:
        if self.balance_by is not None and self.weight_by is not None:
            raise ValueError("set either balance_by or weight_by, not both")
        return self

    @property
    def weighted(self) -> bool:
        """Whether training samples are drawn with weights (one sample at a time, with replacement)."""
        return self.balance_by is not None or self.weight_by is not None


#: The keys of ``[data]`` the core takes out before the data plugin's options are checked.
CORE_DATA_KEYS = frozenset(DataCoreOptions.model_fields)
