"""Opening images and turning them into training tensors with torchvision.transforms.v2.

An image is trained as it is displayed: its EXIF orientation is applied, 16-bit greyscale is scaled
down to 8 bits (not clipped, which turns it white), transparency is composited on white. An image
Pillow flags as a possible decompression bomb is never decoded: it is unreadable like a broken file.

Randomness (crop offsets, flips) comes from a ``random.Random`` the caller owns, so it is seeded with
the run and the same seed gives the same crops.
"""

from __future__ import annotations

import io
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from loraplug import LoraplugError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
# Part of every cached latent's key: bump it when the pixels an image file decodes to change, so a
# latent cached on disk by an older decoding (an unrotated photo, a white 16-bit PNG) is not reused.
DECODING_VERSION = 2
# EXIF orientations that turn the stored image by 90°: its displayed width is its stored height.
QUARTER_TURNS = frozenset({5, 6, 7, 8})
ORIENTATION_TAG = 0x0112
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

ImageSource = str | Path | bytes | Any  # a path, encoded bytes, or a PIL image


class TooLargeImage(ValueError):
    """Pillow's decompression-bomb check refused the image (its error, or its warning made one)."""


def _open(source: ImageSource) -> Any:
    from PIL import Image

    if isinstance(source, Image.Image):
        return source
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that, then decodes it anyway; both are
    # refused here, so a huge image is skipped and counted instead of taking the memory of the run.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise TooLargeImage(
                f"it has more pixels than Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,} "
                f"(PIL.Image.MAX_IMAGE_PIXELS); downscale it if it is a real image ({exc})"
            ) from exc


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
    """Why the image cannot be used (unreadable, truncated, empty, too large), or ``None`` when it decodes fully."""
    try:
        with _opened(source) as image:
            image.load()  # decodes every pixel: a truncated file fails here, not mid-epoch
            if image.width < 1 or image.height < 1:
                return "it has no pixels"
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for unknown or broken files
        return str(exc).split("\n")[0] or type(exc).__name__
    return None


def _eight_bit(image: Any) -> Any:
    """A 16-bit greyscale image as 8-bit ``L``, scaled (65535 → 255); Pillow's own convert clips it to white."""
    import numpy as np
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8), mode="L")


def load_rgb(source: ImageSource, sample_id: str) -> Any:
    """The image as RGB, upright as displayed (transparency composited on white), or a LoraplugError naming the sample."""
    from PIL import Image, ImageOps

    try:
        image = _open(source)
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise LoraplugError(
            f"The image of sample {sample_id} cannot be read any more: {exc}",
            where=str(source) if isinstance(source, str | Path) else sample_id,
            fix="It was readable when the run started; restore the file",
        ) from exc
    image = ImageOps.exif_transpose(image)  # a copy, so a caller's image is left as it was
    if image.mode in SIXTEEN_BIT_MODES:
        image = _eight_bit(image)
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def image_size(source: ImageSource) -> tuple[int, int]:
    """``(width, height)`` as displayed (EXIF orientation applied), without decoding the pixels."""
    with _opened(source) as image:
        width, height = image.size
        return (height, width) if image.getexif().get(ORIENTATION_TAG) in QUARTER_TURNS else (width, height)


def cover_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """The smallest ``(width, height)`` with the image's aspect ratio that covers ``target``."""
    width, height = size
    scale = max(target[0] / width, target[1] / height)
    return max(target[0], round(width * scale)), max(target[1], round(height * scale))


class Placement(NamedTuple):
    """Where a training crop came from: SDXL's size conditioning (``add_time_ids``) is made of it.

    :param original: the image's ``(width, height)`` before resizing.
    :param resized: its ``(width, height)`` after resizing to cover the target.
    :param top: the crop's top row in the resized image.
    :param left: the crop's left column in the resized image, as seen after a flip (the mirrored offset).
    """

    original: tuple[int, int]
    resized: tuple[int, int]
    top: int
    left: int


def place(
    size: tuple[int, int], target: tuple[int, int], *, crop: str, flip: bool, rng: random.Random | None
) -> Placement:
    """Where ``to_tensor`` crops an image of ``size`` for ``target`` — without decoding it.

    A centre crop is torchvision's ``center_crop`` offset; a random crop draws its offsets from ``rng``.
    A flip after the crop is the mirrored crop of the flipped image, so ``left`` is mirrored too (kohya's
    ``crop_left = width - crop_right``).
    """
    width, height = cover_size(size, target)
    if crop == "random" and rng is not None:
        top = rng.randint(0, height - target[1])
        left = rng.randint(0, width - target[0])
    else:
        top = int(round((height - target[1]) / 2.0))
        left = int(round((width - target[0]) / 2.0))
    placement = Placement(size, (width, height), top, left)
    return placement._replace(left=width - left - target[0]) if flip else placement


def to_tensor_placed(
    image: Any, target: tuple[int, int], *, crop: str, flip: bool, rng: random.Random | None
) -> tuple[Any, Placement]:
    """``to_tensor``, and where the crop came from (see :class:`Placement`)."""
    import torch
    from torchvision.transforms.v2 import functional as F

    placement = place(image.size, target, crop=crop, flip=False, rng=rng)
    width, height = placement.resized
    tensor = F.to_image(image)
    tensor = F.resize(tensor, [height, width], interpolation=F.InterpolationMode.BICUBIC, antialias=True)
    tensor = F.crop(tensor, placement.top, placement.left, target[1], target[0])
    if flip:
        tensor = F.horizontal_flip(tensor)
        placement = placement._replace(left=width - placement.left - target[0])
    tensor = F.to_dtype(tensor, torch.float32, scale=True)
    return F.normalize(tensor, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]).clamp(-1.0, 1.0), placement


def to_tensor(
    image: Any, target: tuple[int, int], *, crop: str, flip: bool, rng: random.Random | None
) -> Any:
    """Resize ``image`` to cover ``target`` (width, height), crop to it, maybe flip, scale to [-1, 1].

    :param crop: ``"center"`` or ``"random"`` (offsets from ``rng``).
    :param flip: flip horizontally.
    """
    return to_tensor_placed(image, target, crop=crop, flip=flip, rng=rng)[0]
