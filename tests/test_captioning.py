"""The core's half of auto-captioning (loraplug/captioning.py, ``loraplug data caption``), with a third
party's caption kind registered in-process: the core walks the folder, writes only ``.txt`` files
beside images, keeps the user's captions, and checks what the plugin's captioner answers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from loraplug import KindSpec, Options, hookimpl
from loraplug.captioning import caption_folder, caption_text
from loraplug.errors import PluginError
from loraplug.plugins import ExtraPlugin, PluginHost
from loraplug.testing import run_cli


class ColourOptions(Options):
    word: str = "colour"


class ColourCaptioner:
    """Names each image's top-left colour: a captioner with no model, so the core is tested alone."""

    def __init__(self, options: ColourOptions, answers: int | None) -> None:
        self.options = options
        self.answers = answers
        self.batches: list[int] = []

    def caption(self, images: Sequence[Any]) -> list[list[str]]:
        self.batches.append(len(images))
        tags = [[f"{self.options.word} {image.convert('RGB').getpixel((0, 0))}", "shape"] for image in images]
        return tags[: self.answers] if self.answers is not None else tags


class ColourPlugin:
    def __init__(self, answers: int | None = None, returns: Any = None) -> None:
        self.answers = answers
        self.returns = returns
        self.built: list[ColourCaptioner] = []
        self.devices: list[str | None] = []

    @hookimpl
    def loraplug_register_kinds(self, register: Any) -> None:
        register(KindSpec("caption", "colour", ColourOptions, "the top-left pixel's colour"))

    @hookimpl
    def loraplug_build_captioner(self, kind: str, options: Any, ctx: Any) -> Any:
        if self.returns is not None:
            return self.returns
        self.devices.append(ctx.device)
        self.built.append(ColourCaptioner(options, self.answers))
        return self.built[-1]


def _host(monkeypatch: pytest.MonkeyPatch, plugin: ColourPlugin) -> PluginHost:
    host = PluginHost.load(entry_points=False, extra=[ExtraPlugin(plugin, "loraplug-colour")])
    monkeypatch.setattr("loraplug.plugins._loaded", host)  # the CLI's plugins (load_plugins)
    return host


def _images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"image-{index}.png"
        Image.new("RGB", (4, 4), (index, 0, 0)).save(path)
        paths.append(path)
    return paths


def test_data_caption_writes_txt_files_beside_images_and_calls_the_kinds_hook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = ColourPlugin()
    _host(monkeypatch, plugin)
    folder = tmp_path / "images"
    _images(folder, 3)
    _images(folder / "sub", 2)
    (folder / "image-1.txt").write_text("my own caption\n")
    (folder / "notes.md").write_text("not an image")
    result = run_cli(
        "data",
        "caption",
        folder,
        "--kind",
        "colour",
        "--option",
        "word=red",
        "--batch-size",
        "2",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.stderr
    assert (folder / "image-0.txt").read_text() == "red (0, 0, 0), shape\n"
    assert (folder / "sub" / "image-1.txt").read_text() == "red (1, 0, 0), shape\n"
    assert (folder / "image-1.txt").read_text() == "my own caption\n"
    assert sorted(p.name for p in folder.iterdir()) == [
        "image-0.png", "image-0.txt", "image-1.png", "image-1.txt", "image-2.png", "image-2.txt", "notes.md", "sub",
    ]  # fmt: skip
    assert plugin.built[0].batches == [2, 2]  # four images to caption, two at a time
    assert plugin.devices == ["cpu"]
    assert "5 images" in result.stdout and "4 captioned" in result.stdout and "1 kept" in result.stdout


def test_nothing_to_caption_loads_no_model_but_still_checks_the_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = ColourPlugin()
    _host(monkeypatch, plugin)
    folder = tmp_path / "images"
    for image in _images(folder, 2):
        image.with_suffix(".txt").write_text("done")
    assert run_cli("data", "caption", folder, "--kind", "colour").exit_code == 0
    assert plugin.built == []
    result = run_cli("data", "caption", folder, "--kind", "colour", "-o", "wrod=red")
    assert result.exit_code == 2
    assert "did you mean `caption.word`?" in result.stderr


def test_unreadable_images_and_a_second_image_of_a_stem_are_skipped_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _host(monkeypatch, ColourPlugin())
    folder = tmp_path / "images"
    _images(folder, 1)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (4, 4), (200, 0, 0)).save(folder / "image-0.jpg")  # the same stem as image-0.png
    result = run_cli("data", "caption", folder, "--kind", "colour")
    assert result.exit_code == 0, result.stderr
    assert "(0, 0, 0)" not in (folder / "image-0.txt").read_text()  # image-0.jpg's, which came first
    assert not (folder / "broken.txt").exists()
    assert "2 skipped" in result.stdout and "broken.jpg: cannot be decoded" in result.stderr
    assert "image-0.png: image-0.jpg has the same stem" in result.stderr


def test_a_sub_folder_linked_from_elsewhere_gets_no_caption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _host(monkeypatch, ColourPlugin())
    outside = tmp_path / "outside"
    _images(outside, 1)
    folder = tmp_path / "images"
    _images(folder, 1)
    os.symlink(outside, folder / "linked", target_is_directory=True)
    summary = caption_folder(folder, "colour")
    assert not (outside / "image-0.txt").exists()
    assert (folder / "image-0.txt").exists() and len(summary.written) == 1


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (ColourPlugin(answers=1), "returned 1 answers for 2 images"),
        (
            ColourPlugin(returns="a captioner"),
            "returned str from loraplug_build_captioner, expected a captioner",
        ),
    ],
)
def test_a_captioner_that_breaks_the_contract_is_a_plugin_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plugin: ColourPlugin, message: str
) -> None:
    host = _host(monkeypatch, plugin)
    folder = tmp_path / "images"
    _images(folder, 2)
    with pytest.raises(PluginError, match=message):
        caption_folder(folder, "colour", host=host)
    assert not list(folder.glob("*.txt"))


def test_caption_text_puts_prefix_first_and_append_last_once() -> None:
    assert (
        caption_text(["1girl", "solo", "smile"], prefix=["sks"], append=["solo"]) == "sks, 1girl, smile, solo"
    )
    assert caption_text("a red square on navy", prefix=["sks"]) == "sks, a red square on navy"
    assert caption_text(["", " hat "]) == "hat"


def test_the_caption_kind_example_in_docs_hooks_md_captions_a_folder(tmp_path: Path) -> None:
    """The example a plugin author copies (docs/hooks.md, after loraplug_build_captioner) is a working kind."""
    import re
    from types import ModuleType

    text = (Path(__file__).parents[1] / "docs" / "hooks.md").read_text(encoding="utf-8")
    after = text.split("<!-- END hook: loraplug_build_captioner -->", 1)[1]
    example = re.search(r"```python\n(.*?)```", after, re.S)
    assert example, "docs/hooks.md lost the example of loraplug_build_captioner"
    module = ModuleType("dominant_colour")
    exec(compile(example.group(1), "docs/hooks.md", "exec"), module.__dict__)
    host = PluginHost.load(entry_points=False, extra=[ExtraPlugin(module, "loraplug-dominant-colour")])
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(folder / "red.png")
    summary = caption_folder(folder, "dominant-colour", {"palette": 2}, host=host)
    assert (folder / "red.txt").read_text() == "#ff0000\n" and len(summary.written) == 1
