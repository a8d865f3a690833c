"""Quantized exports reload quantized through ``from_pretrained``, and their recorded figures are what
the reloaded model measures."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from loraplug.testing import run_cli


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from loraplug_causal_lm.testing import trained_tiny_run

    return trained_tiny_run(
        tmp_path_factory.mktemp("quant"),
        train={"max_steps": 4, "lr": 5e-3},
        adapter={"modules_to_save": ["lm_head"]},
        export=[{"kind": "merged"}, {"kind": "bnb-4bit"}],
    )


def _manifest(export: Path) -> dict[str, Any]:
    return json.loads((export / "export.json").read_text())


def _validation_batches(run_dir: Path) -> Any:
    """The run's validation split, loaded and encoded again by the run's own plugins, and the model's
    deployable view (how its outputs and perplexity are measured)."""
    from rich.console import Console

    from loraplug.pipeline import load_run
    from loraplug.plugins import PluginHost
    from loraplug_quant.measure import evaluation_set

    host = PluginHost.load()
    _, ctx, model = load_run(run_dir, host, Console(quiet=True))
    ctx.load_deployable = lambda bundle: host.deployable(bundle, ctx)  # what host.export sets up in a run
    evalset, _ = evaluation_set(ctx, 32)
    return evalset, ctx.deployable(model)


def _check_figures(export: Path, run_dir: Path, reloaded: torch.nn.Module) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    from loraplug_quant.measure import drift

    figures = _manifest(export)["figures"]
    weights = sum(p.stat().st_size for p in export.glob("*.safetensors"))
    unquantized = (run_dir / "exports" / "merged" / "model.safetensors").stat().st_size  # same float32 merge
    assert figures["size_bytes"] == weights and figures["unquantized_size_bytes"] == unquantized
    assert figures["size_ratio"] == pytest.approx(weights / unquantized)
    evalset, deployable = _validation_batches(run_dir)
    assert figures["measured_on"].startswith("validation split")
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "exports" / "merged").eval()
    measured = drift(deployable, merged, reloaded, evalset)
    assert figures["max_abs_logit_drift"] == pytest.approx(measured["max_abs_logit_drift"], rel=1e-4)
    assert 0 < figures["mean_abs_logit_drift"] <= figures["max_abs_logit_drift"]
    assert figures["perplexity_quantized"] == pytest.approx(
        deployable.score(reloaded, evalset.batches)["perplexity"], rel=1e-4
    )
    assert figures["perplexity_unquantized"] == pytest.approx(
        deployable.score(merged, evalset.batches)["perplexity"], rel=1e-4
    )
    change = 100 * (figures["perplexity_quantized"] / figures["perplexity_unquantized"] - 1)
    assert figures["perplexity_change_pct"] == pytest.approx(change)
    return figures


def test_bnb_4bit_export_reloads_as_4bit_and_its_figures_hold(trained_run: Path) -> None:
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    export = trained_run / "exports" / "bnb-4bit"
    reloaded = AutoModelForCausalLM.from_pretrained(export, device_map={"": "cpu"}).eval()
    assert isinstance(reloaded.model.layers[0].mlp.up_proj, bnb.nn.Linear4bit)
    quantization = json.loads((export / "config.json").read_text())["quantization_config"]
    assert quantization["bnb_4bit_quant_type"] == "nf4" and quantization["bnb_4bit_use_double_quant"] is True
    figures = _check_figures(export, trained_run, reloaded)
    assert figures["size_ratio"] < 0.5  # tiny-llama keeps its embeddings and head in float32


def test_reexport_bnb_4bit_fp4_without_double_quant(trained_run: Path) -> None:
    result = run_cli(
        "export",
        trained_run,
        "--kind",
        "bnb-4bit",
        "quant_type=fp4",
        "double_quant=false",
        "--name",
        "bnb-fp4",
    )
    assert result.exit_code == 0, result.output
    assert "bnb-fp4" in result.stdout and "size_ratio" in result.stdout and "loads with" in result.stdout
    export = trained_run / "exports" / "bnb-fp4"
    quantization = json.loads((export / "config.json").read_text())["quantization_config"]
    assert quantization["bnb_4bit_quant_type"] == "fp4" and quantization["bnb_4bit_use_double_quant"] is False
    manifest = _manifest(export)
    assert (
        manifest["adapter"]["path"] == "adapter/adapter.safetensors"
        and len(manifest["adapter"]["sha256"]) == 64
    )


def test_bnb_8bit_export_reloads_as_int8(trained_run: Path) -> None:
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    result = run_cli("export", trained_run, "--kind", "bnb-8bit")
    assert result.exit_code == 0, result.output
    export = trained_run / "exports" / "bnb-8bit"
    reloaded = AutoModelForCausalLM.from_pretrained(export, device_map={"": "cpu"}).eval()
    assert isinstance(reloaded.model.layers[0].mlp.up_proj, bnb.nn.Linear8bitLt)
    assert json.loads((export / "config.json").read_text())["quantization_config"]["load_in_8bit"] is True
    _check_figures(export, trained_run, reloaded)


def test_torchao_int8_export_reloads_with_int8_weights(trained_run: Path) -> None:
    from transformers import AutoModelForCausalLM

    result = run_cli("export", trained_run, "--kind", "int8")
    assert result.exit_code == 0, result.output
    export = trained_run / "exports" / "int8"
    reloaded = AutoModelForCausalLM.from_pretrained(export, device_map={"": "cpu"}).eval()
    weight = reloaded.model.layers[0].mlp.up_proj.weight
    assert type(weight).__module__.startswith("torchao") and "Int8" in type(weight).__name__
    assert (
        json.loads((export / "config.json").read_text())["quantization_config"]["quant_method"] == "torchao"
    )
    figures = _check_figures(export, trained_run, reloaded)
    assert abs(figures["perplexity_change_pct"]) < 5  # weight-only int8 barely moves a model


def test_missing_bitsandbytes_is_one_paragraph_and_changes_nothing(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = sorted(p.name for p in (trained_run / "exports").iterdir())
    monkeypatch.setitem(
        sys.modules, "bitsandbytes", None
    )  # what `import bitsandbytes` sees when it is not installed
    result = run_cli("export", trained_run, "--kind", "bnb-8bit", "--name", "no-bnb")
    assert result.exit_code == 2
    assert (
        "needs bitsandbytes, which is not installed" in result.stderr
        and "pip install 'bitsandbytes>=0.45'" in result.stderr
    )
    assert "Traceback" not in result.output
    assert sorted(p.name for p in (trained_run / "exports").iterdir()) == before
