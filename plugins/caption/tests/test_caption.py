"""``loraplug data caption`` with the wd14 and blip kinds, on tiny models built in conftest.py and a
copy of the tiny SD data set: captions written beside images, existing ones kept unless --overwrite,
options that change what is written, and a clear error when the model cannot be had."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from loraplug.testing import run_cli


def _captions(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))}


def _solid(folder: Path, name: str, colour: tuple[int, ...], size: tuple[int, int] = (20, 12)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    mode = "RGBA" if len(colour) == 4 else "RGB"
    path = folder / name
    Image.new(mode, size, colour).save(path)
    return path


def test_wd14_writes_a_caption_beside_each_uncaptioned_image_and_keeps_the_others(
    shapes: Path, tiny_tagger: Path
) -> None:
    before = _captions(shapes)
    removed = sorted(shapes.glob("shape-00*.txt"))  # 10 images lose their caption
    for path in removed:
        path.unlink()
    result = run_cli("data", "caption", shapes, "--kind", "wd14", "--option", f"pretrained={tiny_tagger}")
    assert result.exit_code == 0, result.stderr
    after = _captions(shapes)
    assert set(after) == set(before)  # every image has its caption again, and nothing else was written
    for name, text in after.items():
        if shapes / name in removed:
            assert text.endswith("\n") and "simple background" in text and "long hair" in text, text
        else:
            assert text == before[name]  # the user's caption, byte for byte
    assert "32 images" in result.stdout and "10 captioned" in result.stdout and "22 kept" in result.stdout
    assert not list(shapes.glob(".*"))  # no temporary file left behind


def test_overwrite_replaces_only_the_txt_captions(shapes: Path, tiny_tagger: Path) -> None:
    files_before = sorted(p.name for p in shapes.iterdir())
    images_before = {p.name: p.read_bytes() for p in shapes.glob("*.png")}
    result = run_cli(
        "data", "caption", shapes, "--kind", "wd14", "-o", f"pretrained={tiny_tagger}", "--overwrite",
        "--prefix", "sks style", "--append", "best quality",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in shapes.iterdir()) == files_before
    assert {p.name: p.read_bytes() for p in shapes.glob("*.png")} == images_before
    for text in _captions(shapes).values():
        assert text.startswith("sks style, ") and text.endswith(", best quality\n")
    assert "32 replaced" in result.stdout


def test_wd14_preprocesses_as_the_real_tagger_and_its_options_change_the_tags(
    tmp_path: Path, tiny_tagger: Path
) -> None:
    """Red reads as red (the model takes BGR), transparency and padding are white, thresholds,
    undesired tags, order, underscores, character tags and the rating tag do what they say."""
    folder = tmp_path / "images"
    _solid(folder, "red.png", (255, 0, 0))
    _solid(folder, "green.png", (0, 255, 0))
    _solid(folder, "clear.png", (255, 0, 0, 0))  # fully transparent: white behind it
    tagger = f"pretrained={tiny_tagger}"

    def caption(*options: str) -> dict[str, list[str]]:
        result = run_cli("data", "caption", folder, "--kind", "wd14", "-o", tagger, "--overwrite", *options)
        assert result.exit_code == 0, result.stderr
        return {name: text.strip().split(", ") for name, text in _captions(folder).items()}

    tags = caption()
    # By confidence; the white padding of the 20x12 image is the white background.
    assert tags["red.txt"] == ["red shape", ">_<", "long hair", "white background", "simple background"]
    assert "white background" in tags["clear.txt"] and "red shape" not in tags["clear.txt"]
    assert "hatsune miku" in tags["green.txt"] and "hatsune miku" not in tags["red.txt"]

    tags = caption("-o", "threshold=0.6", "-o", "character_threshold=1.0")
    assert tags["red.txt"] == ["red shape", ">_<", "long hair", "white background"]  # 0.5 is out
    assert "hatsune miku" not in tags["green.txt"]

    tags = caption(
        "-o", "undesired_tags=long hair, red_shape", "-o", "order=alphabetical", "-o", "replace_underscores=false",
        "-o", "character_first=true", "-o", "rating=true",
    )  # fmt: skip
    assert tags["red.txt"] == ["general", ">_<", "simple_background", "white_background"]
    assert tags["green.txt"][:2] == ["general", "hatsune_miku"]


def test_bad_options_are_one_paragraph_naming_each_problem(shapes: Path, tiny_tagger: Path) -> None:
    before = _captions(shapes)
    result = run_cli(
        "data", "caption", shapes, "--kind", "wd14", "-o", f"pretrained={tiny_tagger}", "-o", "treshold=0.5",
        "-o", "character_threshold=2", "--overwrite",
    )  # fmt: skip
    assert result.exit_code == 2
    assert (
        "unknown key `caption.treshold` (the command-line override `--option treshold=0.5`); did you mean `caption.threshold`?"
        in result.stderr
    )
    assert "`caption.character_threshold` = 2" in result.stderr and "Traceback" not in result.stderr
    assert _captions(shapes) == before
    result = run_cli("data", "caption", shapes, "--kind", "wd41")
    assert result.exit_code == 2 and "Did you mean 'wd14'?" in result.stderr and "Fix --kind" in result.stderr


def test_a_tagger_directory_without_its_tag_list_is_named(tmp_path: Path, tiny_tagger: Path) -> None:
    broken = tmp_path / "tagger"
    broken.mkdir()
    (broken / "model.onnx").write_bytes((tiny_tagger / "model.onnx").read_bytes())
    _solid(tmp_path / "images", "red.png", (255, 0, 0))
    result = run_cli("data", "caption", tmp_path / "images", "--kind", "wd14", "-o", f"pretrained={broken}")
    assert result.exit_code == 2
    assert f"The wd14 model directory {broken} has no selected_tags.csv" in result.stderr


@pytest.mark.slow  # transformers loads and BLIP generates for 32 images
def test_blip_writes_a_sentence_per_image_that_starts_with_the_prompt(shapes: Path, tiny_blip: Path) -> None:
    for path in shapes.glob("*.txt"):
        path.unlink()
    options = ["-o", f"pretrained={tiny_blip}", "-o", "max_new_tokens=4", "-o", "num_beams=1"]
    result = run_cli("data", "caption", shapes, "--kind", "blip", *options, "-o", "prompt=a photo of")
    assert result.exit_code == 0, result.stderr
    captions = _captions(shapes)
    assert len(captions) == 32
    assert all(text.startswith("a photo of") and len(text.split()) > 3 for text in captions.values())


@pytest.mark.slow  # two fresh processes, one loading transformers
def test_offline_with_nothing_cached_is_a_clear_error(tmp_path: Path) -> None:
    _solid(tmp_path / "images", "red.png", (255, 0, 0))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "LORAPLUG_CACHE": str(tmp_path / "cache"),
    }
    for kind, model in (
        ("wd14", "SmilingWolf/wd-vit-tagger-v3"),
        ("blip", "Salesforce/blip-image-captioning-base"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "loraplug", "data", "caption", str(tmp_path / "images"), "--kind", kind],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert f"Could not load the {kind} captioning model '{model}'" in proc.stderr
        assert f"hf download {model}" in proc.stderr and "--option pretrained=DIR" in proc.stderr
        assert "Traceback" not in proc.stderr and "unexpected error" not in proc.stderr
    assert not (tmp_path / "images" / "red.txt").exists()


def test_the_public_api_the_studio_calls(shapes: Path, tiny_tagger: Path) -> None:
    """loraplug.caption_folder: the summary, a captioner built once and reused, progress per image."""
    import loraplug
    from loraplug.captioning import load_captioner

    (shapes / "shape-000.txt").unlink()
    seen: list[str] = []
    summary = loraplug.caption_folder(
        shapes,
        "wd14",
        {"pretrained": str(tiny_tagger), "threshold": 0.6},
        on_caption=lambda p, t: seen.append(p.name),
    )
    assert seen == ["shape-000.png"] and len(summary.kept) == 31 and summary.images == 32
    assert summary.as_json()["written"] == {"shape-000.png": (shapes / "shape-000.txt").read_text().strip()}
    captioner = load_captioner("wd14", {"pretrained": str(tiny_tagger)})
    image = Image.new("RGB", (8, 8), (255, 0, 0))
    assert "red shape" in captioner.caption([image])[0]
    with pytest.raises(loraplug.LoraplugError, match="Image folder not found"):
        loraplug.caption_folder(shapes / "missing", "wd14", captioner=captioner)
