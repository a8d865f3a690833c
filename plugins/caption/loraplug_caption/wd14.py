"""Caption kind ``wd14``: a WD14-style tagger (SmilingWolf's wd-v1-4-* and wd-*-tagger-v3) run with onnxruntime.

The repository layout and the preprocessing are those of SmilingWolf's own demo and of kohya's
``finetune/tag_images_by_wd14_tagger.py``:

* ``model.onnx`` takes a batch of images NHWC, float32, **BGR**, values 0–255 (no normalisation), of
  the size its input declares (448×448 for the published taggers), and returns one probability per
  row of ``selected_tags.csv`` (the sigmoid is inside the graph);
* ``selected_tags.csv`` has the columns ``tag_id,name,category,count``: category 9 is a rating
  (general, sensitive, questionable, explicit — one is picked by argmax), 0 a general tag and 4 a
  character; other categories are not written;
* an image is composited onto white (transparency), padded to a square with white, centred, and
  resized with bicubic resampling.

A tag is written when its probability is above the threshold of its category, as the demo does.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraplug import LoraplugError
from loraplug_caption.hub import model_files
from loraplug_caption.options import Wd14Options

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

FILES = ("model.onnx", "selected_tags.csv")
COLUMNS = ("tag_id", "name", "category", "count")
RATING, GENERAL, CHARACTER = 9, 0, 4
#: The size the published taggers take, for a graph whose input does not declare one.
DEFAULT_SIZE = 448
#: Tags whose underscores are part of the face they draw: never replaced by spaces (SmilingWolf's list).
KAOMOJIS = frozenset(
    {"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o", "@_@",
     "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"}
)  # fmt: skip


@dataclass(frozen=True)
class Tag:
    name: str
    category: int


def read_tags(path: Path) -> list[Tag]:
    """The rows of ``selected_tags.csv``, in the order of the model's outputs."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as exc:
        raise LoraplugError(f"Cannot read the tagger's tag list: {exc}", where=str(path)) from exc
    if not rows or tuple(column.strip() for column in rows[0][:3]) != COLUMNS[:3]:
        raise LoraplugError(
            f"The tagger's tag list does not start with the header {','.join(COLUMNS)}",
            where=f"{path}:1",
            fix="Use the selected_tags.csv of the same tagger repository as model.onnx",
        )
    tags = []
    for line, row in enumerate(rows[1:], start=2):
        try:
            tags.append(Tag(row[1], int(row[2])))
        except (IndexError, ValueError) as exc:
            raise LoraplugError(
                f"The tagger's tag list has a malformed row: {','.join(row)!r}",
                where=f"{path}:{line}",
                fix="Use the selected_tags.csv of the same tagger repository as model.onnx",
            ) from exc
    return tags


def prepare(image: Image.Image, size: int) -> np.ndarray:
    """One image as the tagger takes it: HWC, float32, BGR, 0–255, white behind transparency and
    around the image (padded to a square, centred), resized to ``size`` bicubic."""
    import numpy as np
    from PIL import Image

    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    rgb = canvas.convert("RGB")
    side = max(rgb.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(rgb, ((side - rgb.size[0]) // 2, (side - rgb.size[1]) // 2))
    if side != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(square, dtype=np.float32)[:, :, ::-1]  # PIL's RGB → the BGR the model was trained on


class Wd14Tagger:
    """A loaded tagger: ``caption(images)`` returns each image's tags."""

    def __init__(self, options: Wd14Options, device: str | None) -> None:
        import onnxruntime as ort

        files = model_files(options.pretrained, FILES, "wd14")
        self.options = options
        self.tags = read_tags(files["selected_tags.csv"])
        available = ort.get_available_providers()
        wants_gpu = device is None or device.startswith("cuda")
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if wants_gpu and "CUDAExecutionProvider" in available
            else ["CPUExecutionProvider"]
        )
        try:
            self.session = ort.InferenceSession(str(files["model.onnx"]), providers=providers)
        except Exception as exc:  # noqa: BLE001 — onnxruntime raises its own classes for a bad file
            raise LoraplugError(
                f"onnxruntime cannot load the tagger: {(str(exc).splitlines() or [type(exc).__name__])[0]}",
                where=str(files["model.onnx"]),
                fix="Download model.onnx again from the tagger's repository",
            ) from exc
        node = self.session.get_inputs()[0]
        self.input_name = node.name
        batch, height = node.shape[0], node.shape[1]
        # A graph exported for a fixed batch (some are: batch 1) is fed that many images at a time.
        self.batch = batch if isinstance(batch, int) and batch > 0 else None
        self.size = height if isinstance(height, int) and height > 0 else DEFAULT_SIZE
        self.undesired = {_same(tag) for tag in options.undesired_tags}

    def caption(self, images: Sequence[Image.Image]) -> list[list[str]]:
        import numpy as np

        pixels = np.stack([prepare(image, self.size) for image in images])
        step = self.batch or len(pixels)
        probabilities = np.concatenate(
            [self._run(pixels[start : start + step]) for start in range(0, len(pixels), step)]
        )
        return [self.select(row) for row in probabilities]

    def _run(self, pixels: np.ndarray) -> Any:
        output = self.session.run(None, {self.input_name: pixels})[0]
        if output.ndim != 2 or output.shape[1] != len(self.tags):
            raise LoraplugError(
                f"The tagger returned {output.shape[-1]} scores per image, but its tag list has {len(self.tags)} tags",
                where="--option pretrained",
                fix="Use model.onnx and selected_tags.csv from the same tagger repository",
            )
        return output

    def select(self, probabilities: Any) -> list[str]:
        """The tags of one image, by the options: thresholds, undesired tags, order, names."""
        options = self.options
        general: list[tuple[float, str]] = []
        characters: list[tuple[float, str]] = []
        ratings: list[tuple[float, str]] = []
        for tag, p in zip(self.tags, probabilities.tolist(), strict=True):
            if _same(tag.name) in self.undesired:
                continue
            if tag.category == GENERAL and p > options.threshold:
                general.append((p, tag.name))
            elif tag.category == CHARACTER and p > options.character_threshold:
                characters.append((p, tag.name))
            elif tag.category == RATING:
                ratings.append((p, tag.name))
        if options.order == "alphabetical":
            ordered = sorted(general + characters, key=lambda found: found[1])
        else:
            ordered = sorted(general + characters, key=lambda found: -found[0])
        if options.character_first:
            chosen = {name for _, name in characters}
            ordered = [f for f in ordered if f[1] in chosen] + [f for f in ordered if f[1] not in chosen]
        names = [name for _, name in ordered]
        if options.rating and ratings:
            names.insert(0, max(ratings)[1])
        return [self.written(name) for name in names]

    def written(self, name: str) -> str:
        if self.options.replace_underscores and name not in KAOMOJIS:
            return name.replace("_", " ")
        return name


def _same(tag: str) -> str:
    """A tag as compared with the undesired ones: ``long_hair`` and ``long hair`` are the same tag."""
    return tag.strip().replace("_", " ").lower()
