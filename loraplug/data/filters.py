"""The cleaning filters: the core's own, one class each, and the filter contract plugins implement.

A filter answers ``reason(record)``: ``None`` to keep the record, or a short sentence saying why it
is dropped. Every filter is a kind (``KindSpec("filter", ...)``) built through the hook
``loraplug_build_filter`` — the core's own through its built-in plugin (loraplug/builtin.py), from the
``[data.clean]`` keys — so a plugin's filter works exactly like ``exclude``. Deduplicating filters
remember what they kept, so a stream read again (one epoch after another) gets fresh filters.

Filters read a record's text through :func:`loraplug.record_text` and nothing else. A filter that
cannot read a record — a text filter on a record with no text, an image filter on one with no image
— raises :class:`LoraplugError` naming the sample: it never keeps the record silently. The two
filters on by default are the exceptions by design: ``empty_responses`` looks at chat turns only
(a record with none has no empty answer), and ``exact_dedup`` leaves image records to ``image_dedup``
(the same caption on two different images is no duplicate).

Heavy libraries (datasketch, imagehash, Pillow, numpy) are imported only by the filters that use
them, and only when the recipe asks for those filters.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol

from pydantic import Field, PositiveInt, model_validator

from loraplug.bundles import TEXT_FIELDS, Record, record_text
from loraplug.data.options import Regex
from loraplug.errors import LoraplugError
from loraplug.options import Options


def require_text(record: Record, filter_name: str) -> str:
    """The record's text (:func:`loraplug.record_text`), or the error every filter raises for a record
    without one — for plugin filters too."""
    text = record_text(record)
    if text is None:
        raise LoraplugError(
            f"The {filter_name} filter cannot read sample {sample_id(record)}: it has no text (none of the fields "
            f"{', '.join(TEXT_FIELDS)}; its fields are {', '.join(sorted(record)) or 'none'})",
            fix=f"Remove the {filter_name} filter for this data, or have its data kind put each record's text in "
            '`text`, `messages` or `caption` (docs/plugins.md, "A record\'s text")',
        )
    return text


def normalise(text: str) -> str:
    """Text as compared for duplicates: NFKC (full-width and compatibility forms folded), case-folded,
    runs of whitespace collapsed to one space."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_key(record: Record) -> str | None:
    """The normalised text a record is deduplicated by; chat turns keep their roles (the same words said
    by another role differ). ``None`` when the record has no text."""
    messages = record.get("messages")
    if isinstance(messages, list) and not isinstance(record.get("text"), str):
        return "\x1e".join(
            f"{m.get('role')}\x1f{normalise(str(m.get('content', '')))}"
            for m in messages
            if isinstance(m, dict)
        )
    text = record_text(record)
    return None if text is None else normalise(text)


def sample_id(record: Record) -> str:
    return str(record.get("id", "?"))


class Filter(Protocol):
    """What :func:`loraplug_build_filter` returns: ``description`` (for the report: what it removes) and
    ``reason(record)``: ``None`` to keep the record, or why it is dropped."""

    description: str

    def reason(self, record: Record) -> str | None: ...


# --- the options of the core's own filter kinds (each [data.clean] key maps to one) ---------------


class NoFilterOptions(Options):
    """A filter without options."""


class PatternOptions(Options):
    """``include`` / ``exclude``: regular expressions searched in the record's text."""

    patterns: list[Regex] = Field(
        min_length=1, description="Regular expressions (Python `re.search`) searched in the sample's text."
    )


class CharLengthOptions(Options):
    """``length_chars``: bounds on the number of characters of the record's text."""

    min_chars: int | None = Field(None, ge=0, description="Drop samples with fewer characters.")
    max_chars: PositiveInt | None = Field(None, description="Drop samples with more characters.")

    @model_validator(mode="after")
    def _a_bound(self) -> CharLengthOptions:
        if self.min_chars is None and self.max_chars is None:
            raise ValueError("set min_chars, max_chars or both")
        if self.min_chars is not None and self.max_chars is not None and self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is larger than max_chars ({self.max_chars})")
        return self


class MinResolutionOptions(Options):
    """``min_resolution``: the smallest shorter side of an image, in pixels."""

    pixels: PositiveInt = Field(description="Drop images whose shorter side has fewer pixels.")


class NearDedupOptions(Options):
    """``near_dedup``: MinHash near-duplicate detection on the records' text."""

    threshold: float = Field(
        gt=0,
        lt=1,
        description="Drop samples whose estimated Jaccard similarity to an earlier one is at least this.",
    )
    ngram: PositiveInt = Field(5, description="Character n-gram size of the shingles.")
    num_perm: int = Field(
        128, ge=16, le=1024, description="MinHash permutations: more is more exact and slower."
    )

    def optional_libraries(self) -> tuple[str, ...]:
        """datasketch's MinHash LSH imports scipy (see loraplug.optional)."""
        return ("scipy",)


class ImageDedupOptions(Options):
    """``image_dedup``: perceptual-hash duplicate detection on the records' images."""

    distance: int = Field(
        ge=0,
        le=64,
        description="Drop images whose perceptual hash is within this Hamming distance of an earlier one's.",
    )

    def optional_libraries(self) -> tuple[str, ...]:
        """imagehash's phash imports scipy (see loraplug.optional)."""
        return ("scipy",)


class EmptyResponses:
    name = "empty_responses"
    description = "an assistant turn is empty or whitespace"

    def reason(self, record: Record) -> str | None:
        messages = record.get("messages")
        if not isinstance(messages, list):
            return None
        for index, message in enumerate(messages):
            if (
                isinstance(message, dict)
                and message.get("role") == "assistant"
                and not str(message.get("content", "")).strip()
            ):
                return f"messages[{index}] (assistant) is empty"
        return None


class Include:
    name = "include"

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = [re.compile(p) for p in patterns]
        self.description = "matches none of " + ", ".join(f"/{p}/" for p in patterns)

    def reason(self, record: Record) -> str | None:
        text = require_text(record, self.name)
        if any(p.search(text) for p in self.patterns):
            return None
        return "matches no include pattern"


class Exclude:
    name = "exclude"

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = [re.compile(p) for p in patterns]
        self.description = "matches " + ", ".join(f"/{p}/" for p in patterns)

    def reason(self, record: Record) -> str | None:
        text = require_text(record, self.name)
        for pattern in self.patterns:
            if pattern.search(text):
                return f"matches /{pattern.pattern}/"
        return None


class CharLength:
    name = "length_chars"

    def __init__(self, low: int | None, high: int | None) -> None:
        self.low, self.high = low, high
        self.description = _range_text("characters", low, high)

    def reason(self, record: Record) -> str | None:
        text = require_text(record, self.name)
        messages = record.get("messages")
        size = len(text)
        if isinstance(messages, list) and not isinstance(record.get("text"), str):
            # Chat turns count their contents only, not the line breaks that join them.
            size = sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
        return _out_of_range(size, "characters", self.low, self.high)


def _range_text(unit: str, low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"fewer than {low} or more than {high} {unit}"
    return f"fewer than {low} {unit}" if low is not None else f"more than {high} {unit}"


def _out_of_range(size: int, unit: str, low: int | None, high: int | None) -> str | None:
    if low is not None and size < low:
        return f"{size} {unit} < {low}"
    if high is not None and size > high:
        return f"{size} {unit} > {high}"
    return None


class ExactDuplicates:
    """Text records by their normalised text; records with neither text nor image by all their fields
    but ``id``. Image records are left to ``image_dedup``: the same caption on two images is no duplicate."""

    name = "exact_dedup"
    description = "same normalised text as an earlier sample"

    def __init__(self) -> None:
        self.seen: dict[bytes, str] = {}

    def reason(self, record: Record) -> str | None:
        if record.get("image") is not None:
            return None
        key = text_key(record)
        if key is None:
            key = self._fields_key(record)
        digest = hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()
        first = self.seen.get(digest)
        if first is not None:
            return f"same text as {first}"
        self.seen[digest] = sample_id(record)
        return None

    def _fields_key(self, record: Record) -> str:
        fields = {k: v for k, v in record.items() if k != "id"}
        try:
            return "\x1d" + json.dumps(fields, sort_keys=True, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise LoraplugError(
                f"The exact_dedup filter cannot read sample {sample_id(record)}: it has no text or image, and its fields "
                f"are not plain JSON values to compare ({exc})",
                fix="Set data.clean.exact_dedup = false for this data, or have its data kind put each record's text in "
                "`text`, `messages` or `caption`",
            ) from exc


class NearDuplicates:
    """MinHash signatures of character n-grams, candidates from LSH, confirmed by the estimated Jaccard."""

    name = "near_dedup"

    def __init__(self, threshold: float, ngram: int, num_perm: int) -> None:
        self.threshold, self.ngram, self.num_perm = threshold, ngram, num_perm
        self.description = (
            f"estimated Jaccard similarity ≥ {threshold} to an earlier sample ({ngram}-character shingles)"
        )
        from datasketch import MinHashLSH

        self.lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        self.signatures: dict[str, Any] = {}

    def _signature(self, text: str) -> Any:
        from datasketch import MinHash

        n = self.ngram
        shingles = {text[i : i + n] for i in range(max(1, len(text) - n + 1))}
        signature = MinHash(num_perm=self.num_perm, seed=1)
        signature.update_batch([s.encode("utf-8") for s in shingles])
        return signature

    def reason(self, record: Record) -> str | None:
        if record.get("image") is not None:
            raise LoraplugError(
                f"The near_dedup filter compares text samples; sample {sample_id(record)} is an image sample",
                fix="Remove data.clean.near_dedup_threshold for image data; data.clean.image_dedup_distance finds duplicate images",
            )
        require_text(record, self.name)
        key = text_key(record)
        assert key is not None  # noqa: S101 — require_text found text
        signature = self._signature(key)
        best, best_id = 0.0, ""
        for other in self.lsh.query(signature):
            similarity = signature.jaccard(self.signatures[other])
            if similarity > best:
                best, best_id = similarity, other
        if best >= self.threshold:
            return f"{best:.2f} similar to {best_id}"
        name = sample_id(record)
        while name in self.signatures:  # ids are unique in practice; never let one overwrite another
            name += "'"
        self.lsh.insert(name, signature)
        self.signatures[name] = signature
        return None


def open_image(record: Record, filter_name: str) -> Any:
    """The record's image as a PIL image (opened lazily: the size is read from the header); a record
    without one is an error naming the filter."""
    value = record.get("image")
    if value is None:
        raise LoraplugError(
            f"The {filter_name} filter cannot read sample {sample_id(record)}: it has no image "
            f"(its fields are {', '.join(sorted(record)) or 'none'})",
            fix=f"Remove the {filter_name} filter for data without images",
        )
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    try:
        if isinstance(value, (str, Path)):
            return Image.open(value)
        if isinstance(value, (bytes, bytearray)):
            return Image.open(BytesIO(value))
    except OSError as exc:
        raise LoraplugError(
            f"Cannot read the image of sample {sample_id(record)}: {exc}", where=sample_id(record)
        ) from exc
    raise LoraplugError(
        f"The {filter_name} filter cannot read the image of sample {sample_id(record)}: a {type(value).__name__}, "
        "not a path, bytes or a PIL image",
        fix=f"Remove the {filter_name} filter, or have the data kind give images as paths, bytes or PIL images",
    )


class MinResolution:
    name = "min_resolution"

    def __init__(self, pixels: int) -> None:
        self.pixels = pixels
        self.description = f"shorter side below {pixels} px"

    def reason(self, record: Record) -> str | None:
        image = open_image(record, self.name)
        width, height = image.size
        return f"{width}×{height} px" if min(width, height) < self.pixels else None


class ImageDuplicates:
    """Perceptual hashes compared against every kept image's at once (numpy XOR and popcount)."""

    name = "image_dedup"

    def __init__(self, distance: int) -> None:
        self.distance = distance
        self.description = f"perceptual hash within {distance} bits of an earlier image"
        self.hashes: list[int] = []
        self.ids: list[str] = []

    def reason(self, record: Record) -> str | None:
        image = open_image(record, self.name)
        import imagehash
        import numpy as np

        value = int(str(imagehash.phash(image.convert("RGB"))), 16)
        if self.hashes:
            known = np.array(self.hashes, dtype=np.uint64)
            distances = np.bitwise_count(known ^ np.uint64(value))
            nearest = int(distances.argmin())
            if int(distances[nearest]) <= self.distance:
                return f"{int(distances[nearest])} bits from {self.ids[nearest]}"
        self.hashes.append(value)
        self.ids.append(sample_id(record))
        return None


def builtin_filter(kind: str, options: Any) -> Filter:
    """One of the core's own filters (``loraplug.builtin.BUILTIN_FILTERS``), from its kind and validated options."""
    if kind == "empty_responses":
        return EmptyResponses()
    if kind == "include":
        return Include(options.patterns)
    if kind == "exclude":
        return Exclude(options.patterns)
    if kind == "length_chars":
        return CharLength(options.min_chars, options.max_chars)
    if kind == "min_resolution":
        return MinResolution(options.pixels)
    if kind == "exact_dedup":
        return ExactDuplicates()
    if kind == "near_dedup":
        return NearDuplicates(options.threshold, options.ngram, options.num_perm)
    if kind == "image_dedup":
        return ImageDuplicates(options.distance)
    raise KeyError(kind)
