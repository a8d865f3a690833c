"""The onnx export of a causal LM: it loads in onnxruntime, computes what the trained model computes on
shapes the export never saw, records its figures, and fails cleanly — keeping everything else."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from loraplug.testing import run_cli


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from loraplug_causal_lm.testing import trained_tiny_run

    return trained_tiny_run(
        tmp_path_factory.mktemp("onnx"),
        train={"max_steps": 4, "lr": 5e-3},
        adapter={"modules_to_save": ["lm_head"]},
        export=[{"kind": "peft"}, {"kind": "onnx"}],
    )


def _trained_logits(run_dir: Path, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
    from rich.console import Console

    from loraplug.pipeline import load_run
    from loraplug.plugins import PluginHost

    _, _, model = load_run(run_dir, PluginHost.load(), Console(quiet=True))
    model.module.eval()
    with torch.no_grad():
        return model.module(input_ids=input_ids, attention_mask=attention_mask).logits.numpy()


def _digests(directory: Path) -> dict[str, str]:
    return {f["path"]: f["sha256"] for f in json.loads((directory / "export.json").read_text())["files"]}


def test_onnx_export_runs_in_onnxruntime_and_matches_the_trained_model(trained_run: Path) -> None:
    import onnx
    import onnxruntime

    export = trained_run / "exports" / "onnx"
    manifest = json.loads((export / "export.json").read_text())
    figures = manifest["figures"]
    assert (
        figures["opset"]
        == 20
        == next(o.version for o in onnx.load(str(export / "model.onnx")).opset_import if o.domain == "")
    )
    assert figures["inputs"] == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    assert figures["parity_shapes"]["input_ids"] != figures["export_shapes"]["input_ids"]
    assert 0 <= figures["max_abs_logit_diff"] < figures["tolerance"] == 1e-4
    assert {"model.onnx", "tokenizer.json", "config.json"} <= {f["path"] for f in manifest["files"]}

    # A third shape, neither the export's nor the check's, with left padding this time.
    input_ids = torch.randint(0, 200, (4, 21), generator=torch.Generator().manual_seed(3))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :5] = 0
    session = onnxruntime.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(
        ["logits"], {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
    )
    trained = _trained_logits(trained_run, input_ids, attention_mask)
    real = attention_mask.numpy().astype(bool)  # a padded query's logits are meaningless either way
    assert np.abs(logits[real] - trained[real]).max() < 1e-4


def test_parity_failure_fails_the_export_and_keeps_the_previous_one(trained_run: Path) -> None:
    before = {name: _digests(trained_run / "exports" / name) for name in ("peft", "onnx")}
    adapter = (trained_run / "adapter" / "adapter.safetensors").read_bytes()
    # float32 onnxruntime and PyTorch agree to ~1e-7 here, never to 1e-12.
    result = run_cli("export", trained_run, "--kind", "onnx", "tolerance=1e-12", "--overwrite")
    assert result.exit_code != 0
    assert "does not compute what PyTorch does" in result.stderr and "tolerance 1e-12" in result.stderr
    assert "Traceback" not in result.output
    assert {name: _digests(trained_run / "exports" / name) for name in ("peft", "onnx")} == before
    assert (trained_run / "adapter" / "adapter.safetensors").read_bytes() == adapter
    assert sorted(p.name for p in (trained_run / "exports").iterdir()) == [
        "onnx",
        "peft",
    ]  # no temporary left
    status = json.loads((trained_run / "run.json").read_text())
    assert any(e["name"] == "onnx" and not e["ok"] for e in status["exports"])


def test_unsupported_family_is_refused_and_the_run_keeps_its_other_exports(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, BloomConfig, BloomForCausalLM

    from loraplug_causal_lm.presets import preset_dir
    from loraplug_causal_lm.testing import tiny_lm_recipe

    tokenizer = AutoTokenizer.from_pretrained(preset_dir("tiny-llama", Path(os.environ["LORAPLUG_CACHE"])))
    config = BloomConfig(
        vocab_size=len(tokenizer), hidden_size=32, n_layer=1, n_head=2, pad_token_id=tokenizer.pad_token_id
    )
    BloomForCausalLM(config).save_pretrained(tmp_path / "tiny-bloom")
    tokenizer.save_pretrained(tmp_path / "tiny-bloom")
    recipe = tiny_lm_recipe(
        tmp_path,
        model={"pretrained": str(tmp_path / "tiny-bloom")},
        train={"max_steps": 1},
        eval={"sample_prompts": []},
        export=[{"kind": "onnx"}, {"kind": "peft"}],
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 2
    assert (
        "does not support the model family 'bloom'" in result.stderr and "any_family = true" in result.stderr
    )
    run_dir = tmp_path / "runs" / "tiny"
    assert f"`loraplug export {run_dir} --kind onnx`" in result.stderr  # how to retry without retraining
    assert (run_dir / "adapter" / "adapter.safetensors").exists()
    assert (run_dir / "exports" / "peft" / "adapter_model.safetensors").exists()
    assert not (run_dir / "exports" / "onnx").exists()
