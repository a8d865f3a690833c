"""Option models; imported at start-up, so pydantic and braceexpand only."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveInt, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from loraplug import Options

#: Schemes webdataset opens itself; anything else is a local path.
REMOTE_PREFIXES = ("http://", "https://", "s3://", "gs://", "pipe:", "file:")


def expand_shards(value: str | list[str], info: ValidationInfo) -> list[str]:
    """Brace-expanded shard list; local paths made absolute (relative to the recipe) and required to exist."""
    from braceexpand import braceexpand

    patterns = [value] if isinstance(value, str) else list(value)
    shards: list[str] = []
    for pattern in patterns:
        shards.extend(braceexpand(pattern))
    if not shards:
        raise PydanticCustomError("empty", "names no shard")
    base = (info.context or {}).get("base_dir")
    check = (info.context or {}).get("check_files", True)
    resolved = []
    for shard in shards:
        if shard.startswith(REMOTE_PREFIXES):
            resolved.append(shard)
            continue
        path = Path(shard).expanduser()
        if not path.is_absolute() and base is not None:
            path = Path(base) / path
        if check and not path.is_file():
            raise PydanticCustomError(
                "path_missing", "shard not found: {path}", {"path": str(path.absolute())}
            )
        resolved.append(str(path.absolute()))
    return resolved


class WebDatasetOptions(Options):
    """``[data] kind = "webdataset"``."""

    urls: str | list[str] = Field(
        description='Shards: a brace pattern ("shards/shard-{000000..000009}.tar") or a list; local paths are relative to the recipe.'
    )
    val_urls: str | list[str] | None = Field(
        None, description="Validation shards, read whole (up to val_max_samples) before training."
    )
    val_max_samples: PositiveInt = Field(512, description="Cap on validation samples read from val_urls.")
    samples: Literal["auto", "image", "text"] = Field(
        "auto",
        description="What a sample is: an image with a caption, chat text in JSON, or `auto` (an image if it has one).",
    )
    image_keys: list[str] = Field(
        ["jpg", "jpeg", "png", "webp"],
        description="Extensions that hold a sample's image (first present wins).",
    )
    caption_keys: list[str] = Field(
        ["txt", "caption"],
        description="Extensions that hold a sample's caption (then the JSON's caption or text field).",
    )
    json_key: str = Field(
        "json", description="Extension of the JSON part: a text sample's prompt/response or messages."
    )
    shuffle_shards: bool = Field(True, description="Shuffle each process's shards every epoch (seeded).")
    shuffle_buffer: NonNegativeInt = Field(
        1000, description="Samples held in the shuffle buffer; 0 keeps shard order."
    )
    on_corrupt: Literal["skip", "error"] = Field(
        "skip",
        description="A sample or shard that cannot be decoded is skipped and counted, or stops the run naming it.",
    )

    _urls = field_validator("urls")(expand_shards)

    @field_validator("val_urls")
    @classmethod
    def _val(cls, value: str | list[str] | None, info: ValidationInfo) -> list[str] | None:
        return None if value is None else expand_shards(value, info)

    def produces(self) -> tuple[str, ...]:
        """The record shapes ``samples`` lets through, narrowing the kind's declared ones: recipe check
        refuses ``samples = "text"`` for a model kind that trains on images (and the reverse)."""
        return {"image": ("caption-image",), "text": ("chat",)}.get(self.samples, ("caption-image", "chat"))
