"""A run imports only the optional libraries it uses: transformers, diffusers and peft import bitsandbytes,
torchao and scipy whenever they are installed, which cost a plain run memory and printed bitsandbytes'
"Failed to load CPU gemm_4bit_forward" warning (docs/performance.md). The causal LM's runs here; Stable
Diffusion's in plugins/diffusion/tests/test_optional_imports.py; a run of a model kind that needs no
modality library at all in tests/test_no_modality_library.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from loraplug import testing
from loraplug.optional import OPTIONAL_LIBRARIES


def run_program(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[set[str], str]:
    """``loraplug ARGS`` in a fresh process; the optional libraries it imported, and its output."""
    return testing.run_program(tmp_path, *args, watch=OPTIONAL_LIBRARIES, env=env)


def test_a_plain_causal_lm_run_imports_no_optional_library(tmp_path: Path, lm_recipe: Any) -> None:
    recipe = lm_recipe(
        train={"max_steps": 2}, eval={"sample_prompts": []}, export=[{"kind": "peft"}, {"kind": "merged"}]
    )
    loaded, output = run_program(tmp_path, "run", str(recipe))
    assert loaded == set(), output
    assert "gemm_4bit_forward" not in output and "Failed to load" not in output


def test_generate_and_export_of_a_plain_run_import_no_optional_library(
    tmp_path: Path, lm_recipe: Any
) -> None:
    # The README's next steps after `make demo`: they printed bitsandbytes' warning though nothing is quantized.
    recipe = lm_recipe(train={"max_steps": 2}, eval={"sample_prompts": []}, export=[])
    run_program(tmp_path, "run", str(recipe))
    run_dir = str(tmp_path / "runs" / "tiny")
    for command in (("generate", run_dir, "--prompt", "hi"), ("export", run_dir, "--kind", "merged")):
        loaded, output = run_program(tmp_path, *command)
        assert loaded == set() and "gemm_4bit_forward" not in output, output
    loaded, output = run_program(tmp_path, "export", run_dir, "--kind", "int8")  # the export's kind uses one
    assert loaded == {"torchao"}, output


def test_a_run_imports_the_optional_libraries_its_recipe_uses(tmp_path: Path, lm_recipe: Any) -> None:
    # QLoRA needs bitsandbytes, near-duplicate cleaning scipy (datasketch); torchao stays out.
    recipe = lm_recipe(
        data={"clean": {"near_dedup_threshold": 0.9}},
        model={"quantization": "nf4"},
        train={"max_steps": 2},
        eval={"sample_prompts": []},
        export=[{"kind": "merged"}],
    )
    loaded, output = run_program(tmp_path, "run", str(recipe))
    assert loaded == {"bitsandbytes", "scipy"}, output


def test_everything_loads_as_before_on_request_and_in_the_callers_own_process(
    tmp_path: Path, lm_recipe: Any
) -> None:
    from loraplug.testing import run_cli

    recipe = lm_recipe(train={"max_steps": 1}, eval={"sample_prompts": []}, export=[])
    loaded, _ = run_program(
        tmp_path, "run", str(recipe), "--overwrite", env={"LORAPLUG_LOAD_ALL_LIBRARIES": "1"}
    )
    assert "bitsandbytes" in loaded  # peft imports it whenever it is installed
    # A caller running the CLI in its own process keeps its libraries: the decision is the program's.
    assert run_cli("run", recipe, "--overwrite").exit_code == 0
    assert [name for name in OPTIONAL_LIBRARIES if name in sys.modules and sys.modules[name] is None] == []
