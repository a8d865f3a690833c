"""Exporters work for any model kind: a model kind that is neither text nor image — the toy regressor of
``loraplug.testing``, rows of numbers through a small MLP, in pure torch and peft — is exported by
``onnx`` and ``int8`` through its deployable view alone, merged once for both."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from loraplug import Deployable, LoraplugError, ModelBundle, RunContext, hookimpl
from loraplug.testing import TOY_DISTRIBUTION, ToyRegressor, toy_plugin_dist, write_recipe

FEATURES = 3


def _rows(count: int, rng: random.Random) -> str:
    lines = []
    for _ in range(count):
        x = [rng.uniform(-1, 1) for _ in range(FEATURES)]
        lines.append(json.dumps({"x": x, "y": 2 * x[0] - x[1] + 0.5 * x[2]}) + "\n")
    return "".join(lines)


def _loraplug(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tmp / "site"), "HF_HUB_OFFLINE": "1", "LORAPLUG_TRACE_HOOKS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "loraplug", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp,
        timeout=600,
    )


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    tmp = tmp_path_factory.mktemp("toy")
    toy_plugin_dist(tmp / "site")
    rng = random.Random(0)
    (tmp / "train.jsonl").write_text(_rows(48, rng))
    (tmp / "val.jsonl").write_text(_rows(16, rng))
    recipe = write_recipe(
        tmp / "toy.toml",
        {
            "run": {"name": "toy", "output_dir": "runs", "seed": 3},
            "data": {"kind": "toy-rows", "path": "train.jsonl", "val_path": "val.jsonl"},
            "model": {"kind": "toy-regressor", "features": FEATURES, "hidden": 8},
            "adapter": {"kind": "lora", "r": 2, "alpha": 4},
            "train": {"max_steps": 20, "batch_size": 8, "lr": 1e-2},
            "export": [{"kind": "onnx"}, {"kind": "int8"}],
        },
    )
    ran = _loraplug(tmp, "run", str(recipe))
    assert ran.returncode == 0, ran.stderr[-3000:]
    return tmp / "runs" / "toy", ran


def _trained(run_dir: Path) -> ModelBundle:
    """The trained toy model, rebuilt in this process by the toy plugin (beside the installed ones: the
    recipe names their exports)."""
    from rich.console import Console

    from loraplug.pipeline import load_run
    from loraplug.plugins import ExtraPlugin, PluginHost

    host = PluginHost.load(extra=[ExtraPlugin(ToyRegressor(), TOY_DISTRIBUTION)])
    _, _, model = load_run(run_dir, host, Console(quiet=True))
    return model


def _figures(export: Path) -> dict[str, Any]:
    return json.loads((export / "export.json").read_text())["figures"]


def test_the_toy_model_is_merged_once_for_both_exports(
    toy_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    run_dir, ran = toy_run
    assert ran.stderr.count("[loraplug hook] loraplug_deployable -> loraplug-toy:loraplug_toy") == 1
    assert ran.stderr.count("[loraplug hook] loraplug_export -> ") == 2
    for name in ("onnx", "int8"):
        assert _figures(run_dir / "exports" / name)["merge_check"] == {
            "max_abs_diff_vs_trained": pytest.approx(0, abs=1e-6),
            "tolerance": 1e-3,
        }


def test_onnx_exports_the_toy_regressor_and_onnxruntime_computes_what_it_computes(
    toy_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    import onnxruntime

    run_dir, _ = toy_run
    export = run_dir / "exports" / "onnx"
    figures = _figures(export)
    assert figures["inputs"] == {"rows": ["batch", FEATURES]} and figures["outputs"] == {
        "prediction": ["batch"]
    }
    assert 0 <= figures["max_abs_prediction_diff"] < figures["tolerance"] == 1e-4
    assert json.loads((export / "config.json").read_text()) == {
        "model": "toy-regressor",
        "features": FEATURES,
        "hidden": 8,
    }

    # A batch size neither traced nor checked.
    rows = torch.randn(7, FEATURES, generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    (prediction,) = session.run(["prediction"], {"rows": rows.numpy()})
    model = _trained(run_dir)
    model.module.eval()
    with torch.no_grad():
        trained = model.module(rows).squeeze(-1).numpy()
        with model.module.disable_adapter():
            base = model.module(rows).squeeze(-1).numpy()
    assert np.abs(prediction - trained).max() < 1e-5
    assert np.abs(prediction - base).max() > 1e-3  # the adapter is in the export


def test_int8_exports_the_toy_regressor_as_int8_weights_with_its_drift_measured(
    toy_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

    run_dir, _ = toy_run
    export = run_dir / "exports" / "int8"
    figures = _figures(export)
    assert {f["path"] for f in json.loads((export / "export.json").read_text())["files"]} == {
        "model.safetensors",
        "config.json",
    }

    # What docs/formats.md tells a user: build the architecture, load the flattened torchao tensors into it.
    path = str(export / "model.safetensors")
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
    state, rest = unflatten_tensor_state_dict(load_file(path), metadata)
    layers = OrderedDict(hidden=torch.nn.Linear(FEATURES, 8), act=torch.nn.Tanh(), out=torch.nn.Linear(8, 1))
    quantized = torch.nn.Sequential(layers)
    quantized.load_state_dict({**state, **rest}, assign=True)
    assert "Int8" in type(quantized.hidden.weight).__name__ and "Int8" in type(quantized.out.weight).__name__

    # The figures are what the reloaded file measures on the validation rows against the trained model.
    val = [json.loads(line) for line in (run_dir.parents[1] / "val.jsonl").read_text().splitlines()]
    x, y = torch.tensor([r["x"] for r in val]), torch.tensor([r["y"] for r in val])
    model = _trained(run_dir)
    model.module.eval()
    with torch.no_grad():
        trained, got = model.module(x).squeeze(-1), quantized.eval()(x).squeeze(-1)
    assert figures["measured_on"] == "validation split, first 16 samples"
    assert figures["max_abs_prediction_drift"] == pytest.approx(
        float((got - trained).abs().max()), rel=1e-4, abs=1e-6
    )
    assert 0 < figures["max_abs_prediction_drift"] < 0.05
    assert figures["mse_quantized"] == pytest.approx(float(((got - y) ** 2).mean()), rel=1e-4)
    assert figures["mse_unquantized"] == pytest.approx(float(((trained - y) ** 2).mean()), rel=1e-4)
    status = json.loads((run_dir / "run.json").read_text())
    # The unquantized model's score is the run's own last validation loss.
    assert figures["mse_unquantized"] == pytest.approx(status["evaluations"][-1]["val_loss"], rel=1e-4)


def test_bitsandbytes_kinds_refuse_a_model_that_from_pretrained_cannot_load(
    toy_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    run_dir, _ = toy_run
    ran = _loraplug(run_dir.parents[1], "export", str(run_dir), "--kind", "bnb-8bit")
    assert ran.returncode == 2, ran.stderr[-2000:]
    assert "quantizes through transformers' from_pretrained" in ran.stderr and "`int8` export" in ran.stderr
    assert "Traceback" not in ran.stderr and not (run_dir / "exports" / "bnb-8bit").exists()


class Mute:
    """A model kind whose plugin offers no deployable view."""

    @hookimpl
    def loraplug_register_kinds(self, register: Any) -> None:
        from loraplug import KindSpec, Options

        register(KindSpec("model", "mute", Options, "no deployable view"))


def test_a_model_kind_without_a_deployable_view_is_named(tmp_path: Path) -> None:
    from loraplug.plugins import ExtraPlugin, PluginHost

    host = PluginHost.load(entry_points=False, extra=[ExtraPlugin(Mute(), "loraplug-mute")])
    ctx = RunContext(recipe=None, run_dir=tmp_path, cache_dir=tmp_path)  # type: ignore[arg-type]
    ctx.load_deployable = lambda model: host.deployable(model, ctx)
    with pytest.raises(
        LoraplugError, match=r"model kind 'mute' \(loraplug-mute\) hands exporters no deployable model"
    ) as raised:
        ctx.deployable(ModelBundle(kind="mute", module=None))
    assert "loraplug_deployable" in raised.value.fix


def test_a_run_builds_each_models_deployable_once(tmp_path: Path) -> None:
    from dataclasses import replace

    built: list[ModelBundle] = []

    def build(model: ModelBundle) -> Deployable:
        built.append(model)
        return Deployable(
            module=None, inputs={}, check_inputs={}, probe=lambda m, x: None, output="y", what="a model"
        )

    ctx = RunContext(recipe=None, run_dir=tmp_path, cache_dir=tmp_path, load_deployable=build)  # type: ignore[arg-type]
    first, second = ModelBundle(kind="k", module=None), ModelBundle(kind="k", module=None)
    assert ctx.deployable(first) is ctx.deployable(first) is replace(ctx, seed=1).deployable(first)
    assert ctx.deployable(second) is not ctx.deployable(first)
    assert [id(model) for model in built] == [id(first), id(second)]
