"""Data kind ``imagefolder``: captions from files or metadata, and every kind of bad input, before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraplug import LoraplugError
from loraplug.testing import run_cli
from loraplug_diffusion.imagefolder import load
from loraplug_diffusion.options import ImageFolderOptions
from loraplug_diffusion.testing import draw_images, tiny_sd_recipe


def _load(path: Path, **options: object) -> tuple[object, list[str]]:
    warnings: list[str] = []
    bundle = load(
        ImageFolderOptions.model_validate({"path": str(path), **options}), seed=0, warn=warnings.append
    )
    return bundle, warnings


def test_captions_come_from_same_stem_text_files(tmp_path: Path) -> None:
    draw_images(tmp_path / "d", 3)
    (tmp_path / "d" / "img-001.txt").write_text("  a special caption \n", encoding="utf-8")
    bundle, _ = _load(tmp_path / "d")
    records = {r["id"]: r for r in bundle.train}
    assert set(records) == {"img-000.png", "img-001.png", "img-002.png"}
    assert records["img-001.png"]["caption"] == "a special caption"
    assert Path(records["img-000.png"]["image"]).is_file()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_metadata_table_gives_image_paths_and_captions(tmp_path: Path, fmt: str) -> None:
    draw_images(tmp_path / "d" / "pics", 2, captions=False)
    rows = [("pics/img-000.png", "first caption"), ("pics/img-001.png", "second, with a comma")]
    if fmt == "jsonl":
        (tmp_path / "d" / "metadata.jsonl").write_text(
            "".join(json.dumps({"image_path": p, "caption": c}) + "\n" for p, c in rows)
        )
    else:
        (tmp_path / "d" / "metadata.csv").write_text(
            "file_name,text\n" + "".join(f'{p},"{c}"\n' for p, c in rows)
        )
    bundle, _ = _load(tmp_path / "d")
    assert [r["caption"] for r in bundle.train] == ["first caption", "second, with a comma"]


def test_missing_caption_policy(tmp_path: Path) -> None:
    draw_images(tmp_path / "d", 2, captions=False)
    with pytest.raises(LoraplugError, match="img-000.png has no caption") as info:
        _load(tmp_path / "d")
    assert "img-000.txt" in str(info.value) and "missing_caption" in str(info.value)
    bundle, _ = _load(tmp_path / "d", missing_caption="filename")
    assert [r["caption"] for r in bundle.train] == ["img 000", "img 001"]
    bundle, _ = _load(tmp_path / "d", missing_caption="empty")
    assert [r["caption"] for r in bundle.train] == ["", ""] and bundle.summary[
        "images without a caption"
    ] == 2


def test_unreadable_and_truncated_images_are_skipped_and_counted(tmp_path: Path) -> None:
    paths = draw_images(tmp_path / "d", 4)
    paths[1].write_bytes(b"not an image at all")
    paths[2].write_bytes(paths[2].read_bytes()[:60])  # a download cut short
    (tmp_path / "d" / "orphan.txt").write_text("a caption without its image")
    bundle, warnings = _load(tmp_path / "d")
    assert [r["id"] for r in bundle.train] == ["img-000.png", "img-003.png"]
    assert bundle.summary["skipped unreadable images"] == 2
    assert bundle.summary["captions without an image"] == 1
    assert any("unreadable" in w for w in warnings) and any("orphan.txt" in w for w in warnings)

    with pytest.raises(LoraplugError, match="img-001.png cannot be read") as info:
        _load(tmp_path / "d", on_unreadable="error")
    assert "on_unreadable" in str(info.value)


def test_decompression_bombs_are_skipped_and_counted_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    draw_images(tmp_path / "d", 2)  # 48×48 = 2304 pixels each
    for name, side in (
        ("warned.png", 60),
        ("refused.png", 100),
    ):  # Pillow warns past the limit, refuses past twice it
        Image.new("RGB", (side, side), (9, 9, 9)).save(tmp_path / "d" / name)
        (tmp_path / "d" / name).with_suffix(".txt").write_text("huge")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    bundle, warnings = _load(tmp_path / "d")
    assert [r["id"] for r in bundle.train] == ["img-000.png", "img-001.png"]
    assert bundle.summary["skipped unreadable images"] == 2
    assert (
        "refused.png" in bundle.summary["first unreadable"]
        and "decompression-bomb" in bundle.summary["first unreadable"]
    )
    assert any("skipped 2 unreadable" in w for w in warnings)

    with pytest.raises(LoraplugError, match="refused.png cannot be read") as info:
        _load(tmp_path / "d", on_unreadable="error")
    message = str(info.value)
    assert (
        str(tmp_path / "d" / "refused.png") in message
        and "downscale it" in message
        and "on_unreadable" in message
    )


def test_validation_split_is_seeded_and_disjoint(tmp_path: Path) -> None:
    draw_images(tmp_path / "d", 8)
    first, _ = _load(tmp_path / "d", val_fraction=0.25)
    again, _ = _load(tmp_path / "d", val_fraction=0.25)
    assert [r["id"] for r in first.val] == [r["id"] for r in again.val] and len(first.val) == 2
    assert not {r["id"] for r in first.val} & {r["id"] for r in first.train}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d.mkdir(), "No images found in"),
        (lambda d: [p.write_bytes(b"junk") for p in draw_images(d, 2)], "None of the 2 images"),
    ],
    ids=["empty-folder", "only-unreadable"],
)
def test_a_folder_without_usable_images_is_one_clear_error(
    tmp_path: Path, make: object, message: str
) -> None:
    make(tmp_path / "images")  # type: ignore[operator]
    result = run_cli("run", tiny_sd_recipe(tmp_path))
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "runs" / "tiny-sd" / "adapter").exists()


def test_resolution_must_be_a_multiple_of_8_before_anything_loads(tmp_path: Path) -> None:
    result = run_cli("recipe", "check", tiny_sd_recipe(tmp_path, model={"resolution": 500}))
    assert result.exit_code == 2
    assert (
        "model.resolution" in result.stderr
        and "multiple of 8" in result.stderr
        and "496 or 504" in result.stderr
    )
