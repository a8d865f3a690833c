"""Data kind ``webdataset`` and ``loraplug data pack``: round trips, splitting, corrupt shards, both modalities."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from loraplug import LoraplugError
from loraplug.testing import run_cli, write_recipe
from loraplug_diffusion.testing import draw_images, tiny_sd_recipe
from loraplug_webdataset.options import WebDatasetOptions
from loraplug_webdataset.stream import ShardStream


def _stream(
    urls: str | list[str], *, rank: int = 0, world: int = 1, **options: object
) -> tuple[ShardStream, list[str]]:
    warnings: list[str] = []
    parsed = WebDatasetOptions.model_validate({"urls": urls, **options})
    return ShardStream(
        list(parsed.urls), parsed, rank=rank, world=world, seed=0, warn=warnings.append
    ), warnings


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_pack_imagefolder_then_stream_gives_the_same_images_and_captions(tmp_path: Path) -> None:
    images = draw_images(tmp_path / "pics", 5)
    result = run_cli(
        "data", "pack", "imagefolder", tmp_path / "pics", "--out", tmp_path / "shards", "--maxcount", "2"
    )
    assert result.exit_code == 0, result.output
    shards = sorted((tmp_path / "shards").glob("shard-*.tar"))
    assert [s.name for s in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert "shard-{000000..000002}.tar" in result.stdout

    stream, warnings = _stream(
        str(tmp_path / "shards" / "shard-{000000..000002}.tar"), shuffle_shards=False, shuffle_buffer=0
    )
    records = list(stream)
    assert not warnings and len(records) == 5
    assert [r["caption"] for r in records] == [p.with_suffix(".txt").read_text().strip() for p in images]
    from PIL import Image

    assert list(records[0]["image"].getdata()) == list(Image.open(images[0]).getdata())
    assert records[0]["id"] == "shard-000000.tar:00000000"


def test_pack_replaces_its_own_shards_only_with_the_flag_and_never_other_files(tmp_path: Path) -> None:
    draw_images(tmp_path / "pics", 2)
    out = tmp_path / "shards"
    assert (
        run_cli("data", "pack", "imagefolder", tmp_path / "pics", "--out", out, "--maxcount", "1").exit_code
        == 0
    )
    result = run_cli("data", "pack", "imagefolder", tmp_path / "pics", "--out", out)
    assert (
        result.exit_code == 2 and "already holds shards" in result.stderr and "--overwrite" in result.stderr
    )
    result = run_cli("data", "pack", "imagefolder", tmp_path / "pics", "--out", out, "--overwrite")
    assert result.exit_code == 0 and [p.name for p in out.iterdir()] == ["shard-000000.tar"]

    (out / "mine.txt").write_text("keep me")
    for flags in ((), ("--overwrite",)):
        result = run_cli("data", "pack", "imagefolder", tmp_path / "pics", "--out", out, *flags)
        assert result.exit_code == 2 and "never replaces files it did not write" in result.stderr
        assert "--overwrite" not in result.stderr  # no flag deletes the user's files: none is suggested
        assert (out / "mine.txt").read_text() == "keep me"


def test_pack_passes_options_to_the_data_kind_and_reports_its_errors(tmp_path: Path) -> None:
    draw_images(tmp_path / "pics", 2, captions=False)
    result = run_cli("data", "pack", "imagefolder", tmp_path / "pics", "--out", tmp_path / "a")
    assert result.exit_code == 2 and "has no caption" in result.stderr and not (tmp_path / "a").exists()
    result = run_cli(
        "data",
        "pack",
        "imagefolder",
        tmp_path / "pics",
        "--out",
        tmp_path / "b",
        "-o",
        "missing_caption=filename",
    )
    assert result.exit_code == 0, result.output
    result = run_cli(
        "data",
        "pack",
        "imagefolder",
        tmp_path / "pics",
        "--out",
        tmp_path / "c",
        "-o",
        "missing_captions=empty",
    )
    assert result.exit_code == 2 and "missing_captions" in result.stderr


def test_processes_and_workers_each_read_their_own_shards(tmp_path: Path) -> None:
    draw_images(tmp_path / "pics", 12)
    assert (
        run_cli(
            "data", "pack", "imagefolder", tmp_path / "pics", "--out", tmp_path / "s", "--maxcount", "2"
        ).exit_code
        == 0
    )
    urls = str(tmp_path / "s" / "shard-{000000..000005}.tar")
    per_rank = [[r["id"] for r in _stream(urls, rank=rank, world=2)[0]] for rank in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == 6 and not set(per_rank[0]) & set(per_rank[1])

    from torch.utils.data import DataLoader, IterableDataset

    class Ids(IterableDataset):
        def __init__(self, stream: ShardStream) -> None:
            self.stream = stream

        def __iter__(self):  # type: ignore[no-untyped-def]
            return (r["id"] for r in self.stream)

    stream, _ = _stream(urls, rank=1, world=2)
    seen = list(DataLoader(Ids(stream), batch_size=None, num_workers=2))
    assert sorted(seen) == sorted(per_rank[1])  # every shard of this rank once, across its two workers


def test_corrupt_samples_and_broken_tars_are_skipped_and_counted(tmp_path: Path) -> None:
    good = draw_images(tmp_path / "pics", 3)
    png = [p.read_bytes() for p in good]
    first = _tar(
        tmp_path / "a.tar",
        {
            "x0.png": png[0],
            "x0.txt": b"fine",
            "x1.png": b"\x89PNG broken",
            "x1.txt": b"broken image",
            "x2.txt": b"no image",
        },
    )
    full = _tar(
        tmp_path / "full.tar",
        {"y0.png": png[1], "y0.txt": b"fine too", "y1.png": png[2], "y1.txt": b"cut off"},
    )
    with tarfile.open(full) as tar:
        cut = tar.getmember("y1.png").offset_data + 10
    (tmp_path / "b.tar").write_bytes(full.read_bytes()[:cut])  # a download cut off in the middle of a member
    stream, warnings = _stream(
        [str(first), str(tmp_path / "b.tar")], shuffle_shards=False, shuffle_buffer=0, samples="image"
    )
    records = list(stream)
    assert [r["caption"] for r in records] == ["fine", "fine too"]
    assert "a.tar:x1" in warnings[0] and "image does not decode" in warnings[0]
    assert "a.tar:x2" in warnings[1] and "no image" in warnings[1]
    assert any("b.tar" in w and "reading the tar" in w for w in warnings[2:])
    assert stream.skipped.count == len(warnings)

    strict, _ = _stream([str(first)], on_corrupt="error", shuffle_buffer=0)
    with pytest.raises(LoraplugError, match=r"Sample a.tar:x1 cannot be used"):
        list(strict)


def test_a_decompression_bomb_sample_is_skipped_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    small, large = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (40, 40)).save(small, format="PNG")  # 1600 pixels
    Image.new("RGB", (100, 100)).save(large, format="PNG")  # over twice the limit below: Pillow refuses it
    shard = _tar(
        tmp_path / "a.tar",
        {"x0.png": large.getvalue(), "x0.txt": b"bomb", "x1.png": small.getvalue(), "x1.txt": b"fine"},
    )
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    stream, warnings = _stream([str(shard)], shuffle_buffer=0, samples="image")
    assert [r["caption"] for r in stream] == ["fine"]
    assert len(warnings) == 1 and "a.tar:x0" in warnings[0] and "too large" in warnings[0]


def pack_chat(tmp_path: Path, rows: list[dict[str, Any]], maxcount: int) -> None:
    """``rows`` as chat.jsonl, packed into shards under s/ (3 of them for the tests below)."""
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "s").mkdir()  # an empty --out is fine
    packed = run_cli(
        "data", "pack", "jsonl", tmp_path / "chat.jsonl", "--out", tmp_path / "s", "--maxcount", str(maxcount)
    )
    assert packed.exit_code == 0, packed.output


def text_stream_recipe(tmp_path: Path, **train: Any) -> Path:
    """A tiny-llama recipe that streams those shards."""
    return write_recipe(
        tmp_path / "text.toml",
        {
            "run": {"name": "text", "output_dir": str(tmp_path / "runs")},
            "data": {"kind": "webdataset", "urls": "s/shard-{000000..000002}.tar"},
            "model": {"kind": "causal-lm", "pretrained": "tiny-llama", "max_length": 32},
            "adapter": {"kind": "lora", "r": 4},
            "train": {"max_steps": 2, **train},
        },
    )


def test_text_samples_stream_into_a_causal_lm(tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i}", "response": f"answer {i}"} for i in range(12)]
    rows.append({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    rows[1]["system"] = "be brief"
    pack_chat(tmp_path, rows, 5)
    stream, _ = _stream(
        str(tmp_path / "s" / "shard-{000000..000002}.tar"), shuffle_buffer=0, shuffle_shards=False
    )
    records = list(stream)
    assert records[0]["messages"] == [
        {"role": "user", "content": "q0"},
        {"role": "assistant", "content": "answer 0"},
    ]
    assert records[-1]["messages"][-1]["content"] == "hello" and len(records) == 13
    # the same messages as the jsonl data kind reads from the same lines, system prompt included
    from loraplug_causal_lm.jsonl import read_jsonl

    assert [r["messages"] for r in records] == [
        r["messages"] for r in read_jsonl(tmp_path / "chat.jsonl", skip_bad=False)[0]
    ]

    recipe = text_stream_recipe(tmp_path, batch_size=4, num_workers=2)
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "runs" / "text" / "run.json").read_text())["step"] == 2


def test_a_streamed_run_resumes_only_on_the_process_count_that_wrote_it(tmp_path: Path) -> None:
    # Streams are split by process and worker, not by a global plan: another process count would not
    # continue where the run stopped (sized data can: docs/distributed.md). The checkpoint's manifest is
    # made to say what a 2-process run writes (2 processes of 4 samples).
    pack_chat(tmp_path, [{"prompt": f"q{i}", "response": f"answer {i}"} for i in range(12)], 4)
    recipe = text_stream_recipe(tmp_path, batch_size=8, save_every_n_steps=1)
    assert run_cli("run", recipe).exit_code == 0
    manifest_path = tmp_path / "runs" / "text" / "checkpoints" / "step-00000001" / "checkpoint.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["processes"] == 1 and manifest["global_micro_batch"] == 8
    manifest["processes"] = 2
    manifest_path.write_text(json.dumps(manifest))
    (tmp_path / "runs" / "text" / "checkpoints" / "step-00000002").rename(
        tmp_path / "runs" / "text" / "later"
    )
    resumed = run_cli("run", recipe, "--resume", "--force")
    assert resumed.exit_code == 2
    assert "its data streams: each process reads its own shards" in resumed.stderr
    assert "Resume on 2 process(es)" in resumed.stderr


def test_samples_skipped_by_dataloader_workers_are_counted_in_the_run(tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i}", "response": f"answer {i}"} for i in range(8)]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert (
        run_cli(
            "data", "pack", "jsonl", tmp_path / "chat.jsonl", "--out", tmp_path / "s", "--maxcount", "4"
        ).exit_code
        == 0
    )
    _tar(
        tmp_path / "s" / "bad.tar", {"b0.json": b"{not json", "b1.json": b'{"prompt": "q", "response": "a"}'}
    )
    recipe = write_recipe(
        tmp_path / "text.toml",
        {
            "run": {"name": "text", "output_dir": str(tmp_path / "runs")},
            # worker 0 reads bad.tar first, worker 1 the first packed shard
            "data": {"kind": "webdataset", "urls": ["s/bad.tar", "s/shard-000000.tar", "s/shard-000001.tar"],
                     "shuffle_shards": False, "shuffle_buffer": 0},
            "model": {"kind": "causal-lm", "pretrained": "tiny-llama", "max_length": 32},
            "adapter": {"kind": "lora", "r": 4},
            "train": {"max_steps": 2, "batch_size": 1, "num_workers": 2},
        },
    )  # fmt: skip
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    assert "data, as read: skipped train samples 1" in result.output
    assert (
        json.loads((tmp_path / "runs" / "text" / "run.json").read_text())["data"]["skipped train samples"]
        == 1
    )


def test_streamed_images_train_stable_diffusion(tmp_path: Path) -> None:
    draw_images(tmp_path / "images", 6)
    assert (
        run_cli(
            "data", "pack", "imagefolder", tmp_path / "images", "--out", tmp_path / "s", "--maxcount", "3"
        ).exit_code
        == 0
    )
    recipe = tiny_sd_recipe(
        tmp_path,
        data={
            "kind": "webdataset",
            "urls": str(tmp_path / "s" / "shard-{000000..000001}.tar"),
            "val_urls": str(tmp_path / "s" / "shard-000001.tar"),
        },
        eval={"sample_prompts": []},
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    assert "streamed data" in result.output
    status = json.loads((tmp_path / "runs" / "tiny-sd" / "run.json").read_text())
    assert (
        status["data"]["shards"] == 2
        and status["data"]["val samples"] == 3
        and len(status["val_losses"]) == 2
    )


def test_a_stream_without_max_steps_is_refused_by_recipe_check(tmp_path: Path) -> None:
    draw_images(tmp_path / "images", 2)
    assert run_cli("data", "pack", "imagefolder", tmp_path / "images", "--out", tmp_path / "s").exit_code == 0
    recipe = tiny_sd_recipe(
        tmp_path, data={"kind": "webdataset", "urls": str(tmp_path / "s" / "shard-000000.tar")}
    )
    result = run_cli("recipe", "check", recipe, "~train.max_steps", "train.epochs=2")
    assert result.exit_code == 2
    assert "`train.max_steps` is missing" in result.stderr and "streams its samples" in result.stderr


def test_missing_shards_and_too_few_shards_are_clear_errors(tmp_path: Path) -> None:
    recipe = tiny_sd_recipe(tmp_path, data={"kind": "webdataset", "urls": "nowhere/shard-{0..1}.tar"})
    result = run_cli("recipe", "check", recipe)
    assert (
        result.exit_code == 2
        and "shard not found" in result.stderr
        and "nowhere/shard-0.tar" in result.stderr
    )

    from types import SimpleNamespace

    from loraplug_webdataset.plugin import loraplug_load_data

    draw_images(tmp_path / "pics", 2)
    run_cli("data", "pack", "imagefolder", tmp_path / "pics", "--out", tmp_path / "s")
    options = WebDatasetOptions.model_validate({"urls": str(tmp_path / "s" / "shard-000000.tar")})
    ctx = SimpleNamespace(
        num_processes=2,
        process_index=0,
        seed=0,
        warn=print,
        recipe=SimpleNamespace(train=SimpleNamespace(num_workers=0)),
    )
    with pytest.raises(LoraplugError, match="1 shard\\(s\\) cannot be split over 2 processes"):
        loraplug_load_data(kind="webdataset", options=options, ctx=ctx)


def test_shards_with_no_samples_are_named_before_the_model_loads(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from loraplug_webdataset.plugin import loraplug_load_data

    (tmp_path / "zero.tar").write_bytes(b"")  # a download that never started
    _tar(tmp_path / "none.tar", {})  # a pack of nothing
    recipe = tiny_sd_recipe(tmp_path, data={"kind": "webdataset", "urls": ["zero.tar", "none.tar"]})
    result = run_cli("run", recipe)
    assert result.exit_code == 2
    assert "No shard of data.urls holds a sample to read" in result.stderr
    assert f"{tmp_path / 'zero.tar'} is empty (0 bytes)" in result.stderr
    assert f"{tmp_path / 'none.tar'} is a tar archive with no files in it" in result.stderr
    assert "yielded no batches" not in result.stderr

    # Among good shards, an empty one is skipped with a warning naming it, or stops the run under on_corrupt = "error".
    draw_images(tmp_path / "pics", 2)
    assert run_cli("data", "pack", "imagefolder", tmp_path / "pics", "--out", tmp_path / "s").exit_code == 0
    urls = [str(tmp_path / "s" / "shard-000000.tar"), str(tmp_path / "zero.tar")]
    warnings: list[str] = []
    ctx = SimpleNamespace(
        num_processes=1,
        process_index=0,
        seed=0,
        warn=warnings.append,
        recipe=SimpleNamespace(train=SimpleNamespace(num_workers=0)),
    )
    loraplug_load_data(kind="webdataset", options=WebDatasetOptions.model_validate({"urls": urls}), ctx=ctx)
    assert (
        len(warnings) == 1
        and f"{tmp_path / 'zero.tar'} is empty (0 bytes)" in warnings[0]
        and "skipped" in warnings[0]
    )
    strict = WebDatasetOptions.model_validate({"urls": urls, "on_corrupt": "error"})
    with pytest.raises(
        LoraplugError, match="1 shard\\(s\\) of data.urls hold no samples: .*zero.tar is empty"
    ):
        loraplug_load_data(kind="webdataset", options=strict, ctx=ctx)


ROWS_KIND = """
from pathlib import Path
from typing import Any
from loraplug import hookimpl, KindSpec, Options

class RowsOptions(Options):
    path: Path
    column: str

@hookimpl
def loraplug_register_kinds(register):
    register(KindSpec("data", "rows", RowsOptions, "a third-party data kind with a required option"))
"""


def test_pack_says_what_is_wrong_with_a_kind_that_cannot_read_source_or_lacks_an_option(
    tmp_path: Path,
) -> None:
    import os
    import subprocess
    import sys

    from loraplug.testing import plugin_dist

    draw_images(tmp_path / "pics", 2)
    assert run_cli("data", "pack", "imagefolder", tmp_path / "pics", "--out", tmp_path / "s").exit_code == 0
    result = run_cli(
        "data", "pack", "webdataset", tmp_path / "s" / "shard-000000.tar", "--out", tmp_path / "again"
    )
    assert result.exit_code == 2
    assert (
        "Data kind 'webdataset' cannot be packed: SOURCE is read as the kind's `path` option" in result.stderr
    )
    assert (
        'use them as they are, [data] kind = "webdataset"' in result.stderr
        and "Field required" not in result.stderr
    )
    assert not (tmp_path / "again").exists()

    site = plugin_dist(
        tmp_path / "site", distribution="loraplug-rows", module="loraplug_rows", source=ROWS_KIND
    )
    (tmp_path / "rows.csv").write_text("a\n")
    proc = subprocess.run(
        [sys.executable, "-m", "loraplug", "data", "pack", "rows", str(tmp_path / "rows.csv"), "--out", str(tmp_path / "r")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(site)}, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert (
        "`column` is required (give it as -o column=VALUE)" in proc.stderr
        and "Field required" not in proc.stderr
    )
