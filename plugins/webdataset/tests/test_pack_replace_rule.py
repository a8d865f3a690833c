"""`loraplug data pack` replaces only what it wrote itself (docs/runs.md, "What loraplug replaces"): it
never writes into, over or around the folder it packs, whatever --out and --overwrite say."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraplug.testing import run_cli
from loraplug_diffusion.testing import draw_images


@pytest.mark.parametrize("out", ["pics", "pics/shards", "."])
def test_pack_never_writes_into_over_or_around_its_source(tmp_path: Path, out: str) -> None:
    images = draw_images(tmp_path / "pics", 2)
    before = {p: p.read_bytes() for p in images}
    result = run_cli("data", "pack", "imagefolder", tmp_path / "pics", "--out", tmp_path / out, "--overwrite")
    assert result.exit_code == 2, result.output
    assert "the source" in result.stderr and "--overwrite" not in result.stderr
    assert {p: p.read_bytes() for p in images} == before
    assert not (tmp_path / "pics" / "shards").exists()
