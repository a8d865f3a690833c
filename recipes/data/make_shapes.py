"""Draw recipes/data/shapes/: small images in one distinctive flat-poster style, each with a caption file.

Every image has the same look — a navy sky, a cream sun, orange hills, and one or two bold teal or
orange shapes — and a comma-separated caption that starts with the style's trigger phrase:

    shapes/shape-007.png   64×64 PNG
    shapes/shape-007.txt   "flat poster style, a teal square, orange hills, a cream sun, navy background"

recipes/tiny_sd_style.toml trains the tiny-sd preset on them; its sample grids move from noise towards
this palette and layout. Run this script again to regenerate the folder; the images are the same on
every machine (seeded, drawn with Pillow without antialiasing).

The WebDataset shards beside them were written from this folder by loraplug itself:

    loraplug data pack imagefolder recipes/data/shapes --out recipes/data/shapes-shards --maxcount 16
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 64
COUNT = 32
NAVY, CREAM, ORANGE, TEAL = (22, 34, 64), (246, 232, 200), (236, 128, 44), (40, 184, 176)
COLOURS = {"orange": ORANGE, "teal": TEAL}
SHAPES = ("circle", "square", "triangle")


def draw_shape(
    canvas: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]
) -> None:
    left, top, right, bottom = box
    if shape == "circle":
        canvas.ellipse(box, fill=colour)
    elif shape == "square":
        canvas.rectangle(box, fill=colour)
    else:
        canvas.polygon([((left + right) // 2, top), (right, bottom), (left, bottom)], fill=colour)


def image(rng: random.Random) -> tuple[Image.Image, str]:
    picture = Image.new("RGB", (SIZE, SIZE), NAVY)
    canvas = ImageDraw.Draw(picture)
    sun_x, sun_y, sun_r = rng.randint(10, 54), rng.randint(8, 20), rng.randint(5, 9)
    canvas.ellipse((sun_x - sun_r, sun_y - sun_r, sun_x + sun_r, sun_y + sun_r), fill=CREAM)
    horizon = rng.randint(44, 50)
    canvas.polygon(
        [
            (0, SIZE),
            (0, horizon),
            (rng.randint(16, 48), horizon - rng.randint(4, 10)),
            (SIZE, horizon),
            (SIZE, SIZE),
        ],
        fill=ORANGE,
    )
    tags = []
    for _ in range(rng.randint(1, 2)):
        shape, colour = rng.choice(SHAPES), rng.choice(sorted(COLOURS))
        side = rng.randint(12, 22)
        left, top = rng.randint(2, SIZE - side - 2), rng.randint(18, horizon - side // 2)
        draw_shape(canvas, shape, (left, top, left + side, top + side), COLOURS[colour])
        tags.append(f"{'an' if colour == 'orange' else 'a'} {colour} {shape}")
    caption = ", ".join(["flat poster style", *tags, "orange hills", "a cream sun", "navy background"])
    return picture, caption


def main() -> None:
    out = Path(__file__).parent / "shapes"
    out.mkdir(exist_ok=True)
    rng = random.Random(7)
    for index in range(COUNT):
        picture, caption = image(rng)
        picture.save(out / f"shape-{index:03d}.png", optimize=True)
        (out / f"shape-{index:03d}.txt").write_text(caption + "\n", encoding="utf-8")
    print(f"wrote {COUNT} images and captions to {out}")


if __name__ == "__main__":
    main()
