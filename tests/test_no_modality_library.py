"""The core needs no modality library: a whole run of the toy regressor (loraplug.testing, pure torch) —
training, evaluation, samples, an export — then `export`, `generate`, `runs show` and `data inspect` on
it, all in one process with every first-party plugin installed beside the toy, import neither
transformers, diffusers nor peft, nor any optional library. The core's tests run on that toy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from loraplug.optional import OPTIONAL_LIBRARIES
from loraplug.testing import toy_recipe

#: What a causal LM, Stable Diffusion or an exporter brings; the core must load none of it.
MODALITY_LIBRARIES = ("transformers", "diffusers", "peft", "tokenizers", "webdataset", "onnx", "onnxruntime")

PROGRAM = """
import json, sys
from loraplug.cli.main import main
codes = [main(args) for args in {commands!r}]
loaded = sorted(name for name in {names!r} if sys.modules.get(name) is not None)
print("RESULT=" + json.dumps({{"codes": codes, "loaded": loaded}}), file=sys.stderr)
"""


def test_a_toy_run_exported_and_sampled_imports_no_modality_library(tmp_path: Path, toy: Path) -> None:
    recipe = toy_recipe(
        tmp_path,
        eval={"every_n_steps": 2, "sample_prompts": ["0.5, -1, 2"]},
        export=[{"kind": "toy-weights"}],
    )
    run_dir = tmp_path / "runs" / "tiny"
    commands = [
        ["run", str(recipe)],
        ["export", str(run_dir), "--kind", "toy-weights", "--name", "again"],
        ["generate", str(run_dir), "--prompt", "1, 2, 3"],
        ["runs", "show", str(run_dir)],
        ["data", "inspect", str(recipe)],
    ]
    code = PROGRAM.format(commands=commands, names=[*MODALITY_LIBRARIES, *OPTIONAL_LIBRARIES])
    # The toy fixture put the toy plugin on PYTHONPATH: the subprocess discovers it beside the installed plugins.
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "RESULT=" in proc.stderr, output[-3000:]
    result = json.loads(proc.stderr.rsplit("RESULT=", 1)[1].splitlines()[0])
    assert result["codes"] == [0] * len(commands), output[-3000:]
    assert result["loaded"] == [], output[-3000:]
    assert (run_dir / "exports" / "again" / "model.safetensors").is_file()


def test_the_probe_sees_a_modality_library_when_one_is_imported(tmp_path: Path) -> None:
    # The check above cannot pass vacuously: the same probe names transformers once something imports it.
    code = PROGRAM.format(commands=[], names=["transformers"]).replace(
        "from loraplug.cli", "import transformers\nfrom loraplug.cli"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stderr.rsplit("RESULT=", 1)[1].splitlines()[0])["loaded"] == ["transformers"]
