"""Opening images and turning them into training tensors with torchvision.transforms.v2.

Randomness (crop offsets, flips) comes from a ``random.Random`` the caller owns, so it is seeded with
the run and the same seed gives the same crops.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loraplug import LoraplugError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})

ImageSource = str | Path | bytes | Any  # a path, encoded bytes, or a PIL image


def _open(source: ImageSource) -> Any:
    from PIL import Image

    if isinstance(source, Image.Image):
        return source
    if isinstance(source, bytes):
        return Image.open(io.BytesIO(source))
    return Image.open(source)


@contextmanager
def _opened(source: ImageSource) -> Iterator[Any]:
    """The image of ``source``, closed afterwards only if it was opened here (a caller's PIL image stays usable)."""
    image = _open(source)
    try:
        yield image
    finally:
        if image is not source:
            image.close()


def check_image(source: ImageSource) -> str | None:
    """Why the image cannot be used (unreadable, truncated, empty), or ``None`` when it decodes fully."""
    try:
        with _opened(source) as image:
            image.load()  # decodes every pixel: a truncated file fails here, not mid-epoch
            if image.width < 1 or image.height < 1:
                return "it has no pixels"
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for unknown or broken files
        return str(exc).split("\n")[0] or type(exc).__name__
    return None


def load_rgb(source: ImageSource, sample_id: str) -> Any:
    """The image as RGB (transparency composited on white), or a LoraplugError naming the sample."""
    from PIL import Image

    try:
        image = _open(source)
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise LoraplugError(
            f"The image of sample {sample_id} cannot be read any more: {exc}",
            where=str(source) if isinstance(source, str | Path) else sample_id,
            fix="It was readable when the run started; restore the file",
        ) from exc
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def image_size(source: ImageSource) -> tuple[int, int]:
    """``(width, height)`` without decoding the pixels."""
    with _opened(source) as image:
        return image.size


def cover_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """The smallest ``(width, height)`` with the image's aspect ratio that covers ``target``."""
    width, height = size
    scale = max(target[0] / width, target[1] / height)
    return max(target[0], round(width * scale)), max(target[1], round(height * scale))


def to_tensor(image: Any, target: tuple[int, int], *, crop: str, flip: bool, rng: random.Random | None) -> Any:
    """Resize ``image`` to cover ``target`` (width, height), crop to it, maybe flip, scale to [-1, 1].

    :param crop: ``"center"`` or ``"random"`` (offsets from ``rng``).
    :param flip: flip horizontally.
    """
    import torch
    from torchvision.transforms.v2 import functional as F

    width, height = cover_size(image.size, target)
    tensor = F.to_image(image)
    tensor = F.resize(tensor, [height, width], interpolation=F.InterpolationMode.BICUBIC, antialias=True)
    if crop == "random" and rng is not None:
        top = rng.randint(0, height - target[1])
        left = rng.randint(0, width - target[0])
        tensor = F.crop(tensor, top, left, target[1], target[0])
    else:
        tensor = F.center_crop(tensor, [target[1], target[0]])
    if flip:
        tensor = F.horizontal_flip(tensor)
    tensor = F.to_dtype(tensor, torch.float32, scale=True)
    return F.normalize(tensor, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]).clamp(-1.0, 1.0)
