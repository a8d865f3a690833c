"""Aspect-ratio buckets, the bucket batch plan, caption augmentation and the image transform."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loraplug_diffusion.buckets import bucket_sizes, nearest_bucket, plan_by_bucket
from loraplug_diffusion.captions import augment, shuffle_tags
from loraplug_diffusion.images import to_tensor


def test_buckets_have_sides_multiple_of_step_and_about_resolution_squared_pixels() -> None:
    sizes = bucket_sizes(512, 64)
    assert (512, 512) in sizes and (384, 640) in sizes and (640, 384) in sizes
    for width, height in sizes:
        assert width % 64 == 0 and height % 64 == 0
        assert width * height <= 512 * 512
        assert width * height >= 0.75 * 512 * 512  # close to the target area, not just under it
        assert max(width, height) <= 4 * min(width, height)


def test_images_go_to_the_bucket_of_their_aspect_ratio() -> None:
    sizes = bucket_sizes(512, 64)
    assert nearest_bucket((1000, 1000), sizes) == (512, 512)
    landscape = nearest_bucket((1920, 1080), sizes)
    portrait = nearest_bucket((1080, 1920), sizes)
    assert landscape[0] > landscape[1] and portrait == landscape[::-1]


@pytest.mark.parametrize("global_batch", [2, 3, 4])
def test_every_planned_batch_is_full_and_from_one_bucket(global_batch: int) -> None:
    keys = [(64, 64)] * 7 + [(32, 128)] * 3 + [(128, 32)] * 1
    plan = plan_by_bucket(keys, epoch=0, seed=1, global_batch=global_batch)
    assert all(len(batch) == global_batch for batch in plan)
    assert all(len({keys[i] for i in batch}) == 1 for batch in plan)
    assert set(range(len(keys))) <= {i for batch in plan for i in batch}  # every sample seen each epoch
    assert plan == plan_by_bucket(keys, epoch=0, seed=1, global_batch=global_batch)
    assert plan != plan_by_bucket(keys, epoch=1, seed=1, global_batch=global_batch)


def test_tag_shuffle_keeps_the_leading_tags_and_every_tag() -> None:
    caption = "sks style, a cat, red hat, blue sky, grass"
    seen = set()
    rng = random.Random(0)
    for _ in range(20):
        shuffled = shuffle_tags(caption, keep=1, rng=rng)
        tags = shuffled.split(", ")
        assert tags[0] == "sks style" and Counter(tags) == Counter(caption.split(", "))
        seen.add(shuffled)
    assert len(seen) > 1


def test_caption_dropout_rate() -> None:
    rng = random.Random(0)
    dropped = sum(augment("a cat", dropout=0.3, shuffle=False, keep=0, rng=rng) == "" for _ in range(2000))
    assert 500 < dropped < 700


def test_transform_covers_the_target_then_crops_and_flips() -> None:
    image = Image.new("RGB", (100, 50), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 50))  # a blue stripe on the left edge
    tensor = to_tensor(image, (48, 32), crop="center", flip=False, rng=None)
    assert tensor.shape == (3, 32, 48) and tensor.min() >= -1 and tensor.max() <= 1
    flipped = to_tensor(image, (48, 32), crop="center", flip=True, rng=None)
    assert torch.equal(flipped, torch.flip(tensor, dims=[-1]))
    crops = {
        tuple(to_tensor(image, (32, 32), crop="random", flip=False, rng=random.Random(s))[2, 0, :4].tolist())
        for s in range(8)
    }
    assert len(crops) > 1  # random crops land in different places


def test_in_memory_images_stay_usable_after_being_checked_and_measured() -> None:
    import io

    from loraplug_diffusion.images import check_image, image_size, load_rgb

    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), (1, 2, 3)).save(buffer, format="PNG")
    image = Image.open(io.BytesIO(buffer.getvalue()))  # opened lazily, as a record may hold it
    assert image_size(image) == (40, 20) and check_image(image) is None
    assert load_rgb(image, "x").getpixel((0, 0)) == (1, 2, 3)  # not closed by the checks above


def test_a_16_bit_png_keeps_its_gradient_scaled_to_8_bits(tmp_path: Path) -> None:
    from loraplug_diffusion.images import load_rgb

    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))  # black to white, left to right
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    assert Image.open(tmp_path / "ramp.png").mode == "I;16"  # what Pillow hands the loader
    row = np.asarray(load_rgb(tmp_path / "ramp.png", "ramp"))[0]
    assert (row[:, 0] == row[:, 1]).all() and (row[:, 0] == row[:, 2]).all()  # still grey
    assert row[0, 0] == 0 and row[-1, 0] == 255 and row[32, 0] == round(ramp[0, 32] / 257)
    assert (np.diff(row[:, 0].astype(int)) >= 0).all() and len(set(row[:, 0])) > 50  # a gradient, not white


def test_an_exif_rotated_photo_is_trained_upright_and_bucketed_by_its_displayed_size(tmp_path: Path) -> None:
    from loraplug_diffusion.images import image_size, load_rgb

    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display", as a phone held upright writes it
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    assert image_size(tmp_path / "phone.jpg") == (20, 40)
    upright = load_rgb(tmp_path / "phone.jpg", "phone")
    assert upright.size == (20, 40)
    top, bottom = upright.getpixel((10, 2)), upright.getpixel((10, 37))
    assert top[2] > 200 and top[0] < 60  # the stored left edge is the displayed top
    assert bottom[0] > 200 and bottom[2] < 60
