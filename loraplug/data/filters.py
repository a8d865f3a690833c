"""The cleaning filters, one class each, over records of any data kind.

A filter answers ``reason(record)``: ``None`` to keep the record, or a short sentence saying why it
is dropped. Deduplicating filters remember what they kept, so a stream read again (one epoch after
another) gets fresh filters from :func:`build_filters`. A filter that does not apply to a record (an
image filter on a chat sample) keeps it.

Heavy libraries (datasketch, imagehash, Pillow, numpy) are imported only by the filters that use
them, and only when the recipe asks for those filters.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol

from loraplug.bundles import Record
from loraplug.data.options import CleanOptions
from loraplug.errors import LoraplugError


def record_text(record: Record) -> str | None:
    """The text of a record: its messages' contents one per line, or its caption; ``None`` if it has none."""
    messages = record.get("messages")
    if isinstance(messages, list):
        return "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    caption = record.get("caption")
    return caption if isinstance(caption, str) else None


def normalise(text: str) -> str:
    """Text as compared for duplicates: NFKC (full-width and compatibility forms folded), case-folded,
    runs of whitespace collapsed to one space."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def chat_key(record: Record) -> str | None:
    """The normalised text of a chat record, roles included (the same words said by another role differ)."""
    messages = record.get("messages")
    if not isinstance(messages, list):
        return None
    return "\x1e".join(f"{m.get('role')}\x1f{normalise(str(m.get('content', '')))}" for m in messages if isinstance(m, dict))


def sample_id(record: Record) -> str:
    return str(record.get("id", "?"))


class Filter(Protocol):
    name: str
    description: str

    def reason(self, record: Record) -> str | None: ...


class EmptyResponses:
    name = "empty_responses"
    description = "an assistant turn is empty or whitespace"

    def reason(self, record: Record) -> str | None:
        messages = record.get("messages")
        if not isinstance(messages, list):
            return None
        for index, message in enumerate(messages):
            if isinstance(message, dict) and message.get("role") == "assistant" and not str(message.get("content", "")).strip():
                return f"messages[{index}] (assistant) is empty"
        return None


class Include:
    name = "include"

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = [re.compile(p) for p in patterns]
        self.description = "matches none of " + ", ".join(f"/{p}/" for p in patterns)

    def reason(self, record: Record) -> str | None:
        text = record_text(record)
        if text is None or any(p.search(text) for p in self.patterns):
            return None
        return "matches no include pattern"


class Exclude:
    name = "exclude"

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = [re.compile(p) for p in patterns]
        self.description = "matches " + ", ".join(f"/{p}/" for p in patterns)

    def reason(self, record: Record) -> str | None:
        text = record_text(record)
        if text is None:
            return None
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
        text = record_text(record)
        if text is None:
            return None
        size = sum(len(str(m.get("content", ""))) for m in record["messages"]) if "messages" in record else len(text)
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
    name = "exact_dedup"
    description = "same normalised text as an earlier sample"

    def __init__(self) -> None:
        self.seen: dict[bytes, str] = {}

    def reason(self, record: Record) -> str | None:
        key = chat_key(record)
        if key is None:
            return None
        digest = hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()
        first = self.seen.get(digest)
        if first is not None:
            return f"same text as {first}"
        self.seen[digest] = sample_id(record)
        return None


class NearDuplicates:
    """MinHash signatures of character n-grams, candidates from LSH, confirmed by the estimated Jaccard."""

    name = "near_dedup"

    def __init__(self, threshold: float, ngram: int, num_perm: int) -> None:
        self.threshold, self.ngram, self.num_perm = threshold, ngram, num_perm
        self.description = f"estimated Jaccard similarity ≥ {threshold} to an earlier sample ({ngram}-character shingles)"
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
        key = chat_key(record)
        if key is None:
            return None
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


def open_image(record: Record) -> Any | None:
    """The record's image as a PIL image (opened lazily: the size is read from the header), or ``None``."""
    value = record.get("image")
    if value is None:
        return None
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    try:
        if isinstance(value, (str, Path)):
            return Image.open(value)
        if isinstance(value, (bytes, bytearray)):
            return Image.open(BytesIO(value))
    except OSError as exc:
        raise LoraplugError(f"Cannot read the image of sample {sample_id(record)}: {exc}", where=sample_id(record)) from exc
    return None


class MinResolution:
    name = "min_resolution"

    def __init__(self, pixels: int) -> None:
        self.pixels = pixels
        self.description = f"shorter side below {pixels} px"

    def reason(self, record: Record) -> str | None:
        image = open_image(record)
        if image is None:
            return None
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
        image = open_image(record)
        if image is None:
            return None
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


def build_filters(options: CleanOptions) -> list[Filter]:
    """The filters the options ask for, in the order they run: cheap checks first, deduplication last."""
    filters: list[Filter] = []
    if options.drop_empty_responses:
        filters.append(EmptyResponses())
    if options.include:
        filters.append(Include(options.include))
    if options.exclude:
        filters.append(Exclude(options.exclude))
    if options.min_chars is not None or options.max_chars is not None:
        filters.append(CharLength(options.min_chars, options.max_chars))
    if options.min_resolution is not None:
        filters.append(MinResolution(options.min_resolution))
    if options.exact_dedup:
        filters.append(ExactDuplicates())
    if options.near_dedup_threshold is not None:
        filters.append(NearDuplicates(options.near_dedup_threshold, options.near_dedup_ngram, options.near_dedup_num_perm))
    if options.image_dedup_distance is not None:
        filters.append(ImageDuplicates(options.image_dedup_distance))
    return filters
