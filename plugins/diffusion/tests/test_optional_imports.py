"""A run imports only the optional libraries it uses: transformers, diffusers and peft import bitsandbytes,
torchao and scipy whenever they are installed, which cost a plain run memory and printed bitsandbytes'
"Failed to load CPU gemm_4bit_forward" warning (docs/performance.md). Stable Diffusion's run here; the
causal LM's in plugins/causal-lm/tests/test_optional_imports.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from loraplug.optional import OPTIONAL_LIBRARIES

#: The `loraplug` program as a user starts it (``main()`` reading sys.argv), then what it had imported.
PROGRAM = """
import json, sys
sys.argv = ["loraplug", *{args!r}]
from loraplug.cli.main import main
code = main()
print("LOADED=" + json.dumps(sorted(name for name in {names!r} if sys.modules.get(name) is not None)), file=sys.stderr)
sys.exit(code)
"""


def run_program(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[set[str], str]:
    """``loraplug ARGS`` in a fresh process; the optional libraries it imported, and its output."""
    code = PROGRAM.format(args=list(args), names=list(OPTIONAL_LIBRARIES))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    loaded = json.loads(proc.stderr.rsplit("LOADED=", 1)[1].splitlines()[0])
    return set(loaded), output


def test_a_plain_stable_diffusion_run_imports_no_optional_library(tmp_path: Path) -> None:
    from loraplug_diffusion.testing import tiny_sd_recipe

    recipe = tiny_sd_recipe(
        tmp_path, eval={"sample_prompts": ["a teal square"]}, export=[{"kind": "diffusers"}]
    )
    loaded, output = run_program(tmp_path, "run", str(recipe))
    assert loaded == set(), output
    assert "gemm_4bit_forward" not in output
