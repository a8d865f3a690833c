"""A run imports only the optional libraries it uses: transformers, diffusers and peft import bitsandbytes,
torchao and scipy whenever they are installed, which cost a plain run memory and printed bitsandbytes'
"Failed to load CPU gemm_4bit_forward" warning (docs/performance.md). Stable Diffusion's run here; the
causal LM's in plugins/causal-lm/tests/test_optional_imports.py."""

from __future__ import annotations

from pathlib import Path

from loraplug import testing
from loraplug.optional import OPTIONAL_LIBRARIES


def run_program(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[set[str], str]:
    """``loraplug ARGS`` in a fresh process; the optional libraries it imported, and its output."""
    return testing.run_program(tmp_path, *args, watch=OPTIONAL_LIBRARIES, env=env)


def test_a_plain_stable_diffusion_run_imports_no_optional_library(tmp_path: Path) -> None:
    from loraplug_diffusion.testing import tiny_sd_recipe

    recipe = tiny_sd_recipe(
        tmp_path, eval={"sample_prompts": ["a teal square"]}, export=[{"kind": "diffusers"}]
    )
    loaded, output = run_program(tmp_path, "run", str(recipe))
    assert loaded == set(), output
    assert "gemm_4bit_forward" not in output
