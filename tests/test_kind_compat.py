"""Kinds declare what they fit — data and model kinds the record shapes, exports the adapter kinds — and
``recipe check`` refuses a mismatch before anything loads; undeclared kinds are never checked."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from loraplug import KindSpec, LoraplugError, Options, hookimpl
from loraplug.cli import render
from loraplug.plugins import ExtraPlugin, PluginHost
from loraplug.recipe.validate import export_section
from loraplug.testing import run_cli, write_recipe
from loraplug_diffusion.testing import draw_images, tiny_sd_recipe


class NoOptions(Options):
    pass


def third_party(*specs: KindSpec) -> ModuleType:
    """A plugin module declaring ``specs`` (hooks beyond the declaration are not called by recipe check)."""

    @hookimpl
    def loraplug_register_kinds(register: Any) -> None:
        for spec in specs:
            register(spec)

    plugin = ModuleType("loraplug_thirdparty")
    plugin.loraplug_register_kinds = loraplug_register_kinds  # type: ignore[attr-defined]
    return plugin


@pytest.fixture
def with_plugin(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``with_plugin(*specs)``: the CLI's plugins are the installed ones plus a third party declaring ``specs``."""

    def install(*specs: KindSpec) -> PluginHost:
        host = PluginHost.load(extra=[ExtraPlugin(third_party(*specs), "loraplug-thirdparty")])
        monkeypatch.setattr("loraplug.plugins._loaded", host)  # the process's plugins (load_plugins)
        return host

    return install


def lm_recipe_with_data(lm_recipe: Any, data: dict[str, Any]) -> Path:
    """The tiny causal-LM recipe with its whole [data] table replaced by ``data``."""
    import tomllib

    path = lm_recipe()
    recipe = tomllib.loads(path.read_text(encoding="utf-8"))
    recipe["data"] = data
    return write_recipe(path, recipe)


def test_jsonl_data_for_stable_diffusion_is_refused_before_anything_loads(
    tmp_path: Path, jsonl_file: Any, chat_rows: Any
) -> None:
    data = jsonl_file("chat.jsonl", chat_rows(4))
    recipe = tiny_sd_recipe(tmp_path, data={"kind": "jsonl", "path": str(data)})
    check = run_cli("recipe", "check", recipe)
    assert check.exit_code == 2
    assert "`data.kind` = 'jsonl' (" in check.stderr
    assert "the data kind 'jsonl' (loraplug-causal-lm) produces chat records" in check.stderr
    assert (
        "the model kind 'stable-diffusion' (loraplug-diffusion) trains on caption-image records"
        in check.stderr
    )
    assert "data kinds that produce them: imagefolder, webdataset" in check.stderr
    run = run_cli("run", recipe)  # the same refusal, and no run directory: nothing was loaded
    assert run.exit_code == 2 and "produces chat records" in run.stderr
    assert not (tmp_path / "runs").exists()


def test_image_data_for_a_causal_lm_is_refused(tmp_path: Path, lm_recipe: Any) -> None:
    draw_images(tmp_path / "images", 2)
    result = run_cli(
        "recipe", "check", lm_recipe(data={"kind": "imagefolder", "path": str(tmp_path / "images")})
    )
    assert result.exit_code == 2
    assert "the data kind 'imagefolder' (loraplug-diffusion) produces caption-image records" in result.stderr
    assert (
        "'causal-lm' (loraplug-causal-lm) trains on chat or preference records; data kinds that produce them: hf-dataset, jsonl, pairs, webdataset"
        in result.stderr
    )


def test_a_data_kind_that_produces_none_of_the_shapes_a_model_accepts_is_refused(
    lm_recipe: Any, with_plugin: Any
) -> None:
    with_plugin(KindSpec("data", "reviews", NoOptions, "labelled reviews", produces="labelled-text"))
    result = run_cli("recipe", "check", lm_recipe_with_data(lm_recipe, {"kind": "reviews"}))
    assert result.exit_code == 2
    assert "the data kind 'reviews' (loraplug-thirdparty) produces labelled-text records" in result.stderr


def test_undeclared_kinds_are_never_checked(lm_recipe: Any, with_plugin: Any) -> None:
    with_plugin(KindSpec("data", "mystery", NoOptions, "a third party's data kind that declares no shape"))
    result = run_cli("recipe", "check", lm_recipe_with_data(lm_recipe, {"kind": "mystery"}))
    assert result.exit_code == 0, result.output


ROOT = Path(__file__).parents[1]
SHARD = ROOT / "recipes" / "data" / "shapes-shards" / "shard-000000.tar"


def test_webdataset_options_narrow_the_shape_it_produces_for_stable_diffusion() -> None:
    """webdataset declares both shapes; `samples = "text"` produces chat only, which Stable Diffusion refuses."""
    recipe = ROOT / "recipes" / "tiny_sd_style_webdataset.toml"
    text = run_cli("recipe", "check", recipe, "data.samples=text")
    assert text.exit_code == 2, text.output
    message = " ".join(text.stderr.split())
    assert "`data.kind` = 'webdataset' (" in message
    assert (
        "the data kind 'webdataset' (loraplug-webdataset) produces chat records with its options as set "
        "(other options produce caption-image), but the model kind 'stable-diffusion' (loraplug-diffusion) "
        "trains on caption-image records" in message
    )
    for fits in ("data.samples=image", "data.samples=auto"):
        assert run_cli("recipe", "check", recipe, fits).exit_code == 0, fits


def test_webdataset_of_images_for_a_causal_lm_is_refused(lm_recipe: Any) -> None:
    data = {"kind": "webdataset", "urls": str(SHARD), "samples": "image"}
    result = run_cli("recipe", "check", lm_recipe_with_data(lm_recipe, data))
    assert result.exit_code == 2
    assert "produces caption-image records with its options as set (other options produce chat)" in " ".join(
        result.stderr.split()
    )
    text = run_cli("recipe", "check", lm_recipe_with_data(lm_recipe, {**data, "samples": "text"}))
    assert text.exit_code == 0, text.output


def test_an_image_filter_on_webdataset_text_samples_is_refused(lm_recipe: Any) -> None:
    """The filters are held against the shapes the options narrow to, not every shape the kind declares."""
    data = {"kind": "webdataset", "urls": str(SHARD), "samples": "text", "clean": {"min_resolution": 16}}
    result = run_cli("recipe", "check", lm_recipe_with_data(lm_recipe, data))
    assert result.exit_code == 2
    assert (
        "the min_resolution filter (loraplug) reads caption-image records, and the data kind 'webdataset' "
        "(loraplug-webdataset) produces chat records" in " ".join(result.stderr.split())
    )


class WrongShapeOptions(Options):
    def produces(self) -> tuple[str, ...]:
        return ("labelled-text",)  # not among the shapes its KindSpec declares


def test_options_that_name_a_shape_their_kind_does_not_declare_are_the_plugins_bug(
    lm_recipe: Any, with_plugin: Any
) -> None:
    with_plugin(
        KindSpec(
            "data", "liar", WrongShapeOptions, "declares chat, its options say otherwise", produces="chat"
        )
    )
    result = run_cli("recipe", "check", lm_recipe_with_data(lm_recipe, {"kind": "liar"}))
    assert result.exit_code != 0 and "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert (
        "The options of the data kind 'liar' (loraplug-thirdparty) say it produces ('labelled-text',)"
        in message
    )
    assert "bug in the plugin" in message


def test_an_export_refuses_an_adapter_kind_it_does_not_declare(lm_recipe: Any, with_plugin: Any) -> None:
    with_plugin(
        KindSpec(
            "export",
            "gguf-lora",
            NoOptions,
            "LoRA pairs for llama.cpp",
            models=("causal-lm",),
            adapters=("lora",),
        )
    )
    ok = run_cli("recipe", "check", lm_recipe(export=[{"kind": "gguf-lora"}]))
    assert ok.exit_code == 0, ok.output
    result = run_cli(
        "recipe",
        "check",
        lm_recipe(adapter={"kind": "lokr"}, export=[{"kind": "merged"}, {"kind": "gguf-lora"}]),
    )
    assert result.exit_code == 2
    assert "`export[1].kind` = 'gguf-lora' (" in result.stderr
    assert (
        "the gguf-lora export (loraplug-thirdparty) does not handle adapter kind 'lokr' (only lora)"
        in result.stderr
    )
    assert "export kinds for causal-lm that handle lokr: " in result.stderr and "merged, " in result.stderr
    assert "export[0]" not in result.stderr  # merged handles LoKr


def test_an_adapter_whose_options_fail_still_has_its_exports_checked(
    lm_recipe: Any, with_plugin: Any
) -> None:
    with_plugin(
        KindSpec(
            "export",
            "gguf-lora",
            NoOptions,
            "LoRA pairs for llama.cpp",
            models=("causal-lm",),
            adapters=("lora",),
        )
    )
    result = run_cli(
        "recipe", "check", lm_recipe(adapter={"kind": "loha", "r": 0}, export=[{"kind": "gguf-lora"}])
    )
    assert result.exit_code == 2
    assert (
        "2 problems" in result.stderr
        and "adapter.r" in result.stderr
        and "does not handle adapter kind 'loha'" in result.stderr
    )


def test_exporting_a_finished_run_checks_its_adapter_kind() -> None:
    host = PluginHost.load()
    with pytest.raises(LoraplugError) as caught:
        export_section(
            host, "diffusers", [], name="diffusers", model_kind="stable-diffusion", adapter_kind="lokr"
        )
    assert "does not handle adapter kind 'lokr'" in caught.value.what and "kohya, merged" in caught.value.what
    export_section(
        host, "kohya", [], name="kohya", model_kind="stable-diffusion", adapter_kind="lokr"
    )  # accepted


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            KindSpec("adapter", "x", NoOptions, produces="chat"),
            "declared `produces` on adapter:x: only data kinds declare it",
        ),
        (
            KindSpec("data", "x", NoOptions, adapters=("lora",)),
            "declared `adapters` on data:x: only export kinds declare it",
        ),
        (
            KindSpec("export", "x", NoOptions, accepts=("chat",)),
            "declared `accepts` on export:x: only model, filter and objective kinds declare it",
        ),
        (KindSpec("model", "x", NoOptions, accepts=()), "must be a non-empty tuple of names"),
    ],
)
def test_a_misplaced_or_empty_declaration_is_a_broken_plugin(spec: KindSpec, message: str) -> None:
    host = PluginHost.load(entry_points=False, extra=[ExtraPlugin(third_party(spec), "loraplug-thirdparty")])
    record = next(r for r in host.records if r.distribution == "loraplug-thirdparty")
    assert record.status == "error" and message in (record.error or "")


def test_one_name_is_a_tuple_of_one() -> None:
    spec = KindSpec("data", "x", NoOptions, produces="caption-image")
    assert spec.produces == ("caption-image",)
    assert KindSpec("export", "y", NoOptions, adapters=["lora", "loha"]).adapters == ("lora", "loha")


def test_plugins_list_shows_what_each_kind_fits() -> None:
    host = PluginHost.load()
    lines = {render.kind_line(s.spec) for s in host.registry.all()}
    assert {
        "data: jsonl (produces chat)",
        "model: causal-lm (accepts chat, preference; provides from_pretrained)",
    } <= lines
    assert "export: diffusers (stable-diffusion, stable-diffusion-xl; adapters lora)" in lines
    table = run_cli("plugins", "list")
    assert table.exit_code == 0 and "produces" in table.stdout and "accepts" in table.stdout
    # Keyed by the plugin (entry point), not the distribution: loraplug-diffusion serves its exports
    # from two entry points (diffusion for SD 1.x/SDXL, flux for Flux), each for its own models.
    listed = {
        (p["name"], k["stage"], k["kind"]): k
        for p in json.loads(run_cli("plugins", "list", "--json").stdout)
        for k in p["kinds"]
    }
    assert listed["flux", "export", "kohya"]["models"] == ["flux"]
    assert listed["causal-lm", "data", "jsonl"]["produces"] == ["chat"]
    assert listed["diffusion", "model", "stable-diffusion"]["accepts"] == ["caption-image"]
    assert listed["diffusion", "export", "diffusers"]["adapters"] == ["lora"]
    assert listed["diffusion", "export", "kohya"]["adapters"] == ["lora", "loha", "lokr"]
    assert listed["causal-lm", "export", "merged"]["adapters"] == ["lora", "loha", "lokr"]
    assert set(listed["webdataset", "data", "webdataset"]["produces"]) == {"caption-image", "chat"}
    assert "produces" not in listed["causal-lm", "adapter", "lora"]  # only what a kind declares


def test_plugins_list_shows_needs_provides_streams_and_direction() -> None:
    """Every declaration, not only the shapes: what an export needs, what a model provides (``()``:
    nothing), a data kind that streams, a metric's direction — in the table and in --json, where declared."""
    lines = {render.kind_line(s.spec) for s in PluginHost.load().registry.all()}
    assert {
        "data: webdataset (produces caption-image, chat; streams)",
        "model: causal-lm (accepts chat, preference; provides from_pretrained)",
        "model: stable-diffusion (accepts caption-image; provides nothing)",
        "export: onnx (needs deployable)",
        "export: bnb-8bit (needs deployable, from_pretrained)",
        "metric: bleu (causal-lm; higher is better)",
        "metric: perplexity (causal-lm; lower is better)",
    } <= lines
    table = " ".join(run_cli("plugins", "list").stdout.split())
    for word in ("needs", "provides", "streams", "better"):  # the table wraps "lower is better"
        assert word in table, word
    listed = {
        (p["name"], k["stage"], k["kind"]): k
        for p in json.loads(run_cli("plugins", "list", "--json").stdout)
        for k in p["kinds"]
    }
    assert listed["onnx", "export", "onnx"]["needs"] == ["deployable"]
    assert listed["quant", "export", "bnb-4bit"]["needs"] == ["deployable", "from_pretrained"]
    assert listed["causal-lm", "model", "causal-lm"]["provides"] == ["from_pretrained"]
    assert listed["diffusion", "model", "stable-diffusion"]["provides"] == []  # declared: nothing
    assert listed["webdataset", "data", "webdataset"]["streams"] is True
    assert listed["causal-lm", "metric", "bleu"]["higher_is_better"] is True
    assert listed["causal-lm", "metric", "perplexity"]["higher_is_better"] is False
    jsonl = listed["causal-lm", "data", "jsonl"]  # undeclared: absent, not null or false
    assert not {"streams", "needs", "provides", "higher_is_better"} & set(jsonl)


def test_recipe_keys_notes_what_each_kind_fits() -> None:
    result = run_cli("recipe", "keys", "--markdown")
    assert result.exit_code == 0
    assert (
        "(adapters: lora)" in result.stdout
        and "(produces: chat)" in result.stdout
        and "(accepts: caption-image)" in result.stdout
    )
    assert "(produces: caption-image, chat; streams)" in result.stdout
    assert "(accepts: caption-image; provides: nothing)" in result.stdout
    assert "(accepts: chat, preference; provides: from_pretrained)" in result.stdout
    assert "parity checked (needs: deployable)" in result.stdout


def test_the_declaring_fit_example_in_docs_plugins_md_runs(tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    text = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- example: declaring fit -->\n```python\n(.*?)```", text, re.S)
    assert match, "docs/plugins.md lost its declaring-fit example"
    (tmp_path / "example.py").write_text(match.group(1), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "example.py"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:3] == ["['hf-dataset', 'jsonl', 'webdataset']", "True", "False"]


# --- Every combination the kinds can express, refused by recipe check when it cannot work ---------------

#: A third party's model kind with an adapter and an export of its own, and no deployable view.
MUTE = (
    KindSpec("model", "mute", NoOptions, "a model kind whose plugin has no loraplug_deployable"),
    KindSpec("adapter", "plain", NoOptions, "its adapter", models=("mute",)),
    KindSpec("export", "mute-weights", NoOptions, "its own export", models=("mute",)),
)


def mute_recipe(tmp_path: Path, exports: list[Any]) -> Path:
    """A recipe for the ``mute`` model kind (on chat data: it declares no record shape) with ``exports``
    (kinds, or whole [[export]] tables)."""
    data = tmp_path / "chat.jsonl"
    data.write_text('{"prompt": "q", "response": "a"}\n', encoding="utf-8")
    return write_recipe(
        tmp_path / "mute.toml",
        {
            "run": {"name": "mute", "output_dir": str(tmp_path / "runs")},
            "data": {"kind": "jsonl", "path": str(data)},
            "model": {"kind": "mute"},
            "adapter": {"kind": "plain"},
            "export": [{"kind": e} if isinstance(e, str) else e for e in exports],
        },
    )


def with_deployable(plugin: ModuleType) -> ModuleType:
    """``plugin`` implementing ``loraplug_deployable`` too (recipe check never calls it)."""

    @hookimpl
    def loraplug_deployable(model: Any, ctx: Any) -> Any:
        raise AssertionError("recipe check must not build a deployable model")

    plugin.loraplug_deployable = loraplug_deployable  # type: ignore[attr-defined]
    return plugin


def test_an_export_that_needs_a_deployable_view_refuses_a_model_kind_whose_plugin_has_none(
    tmp_path: Path, with_plugin: Any
) -> None:
    with_plugin(*MUTE)
    recipe = mute_recipe(tmp_path, ["mute-weights", "onnx", "int8", "bnb-8bit"])
    result = run_cli("recipe", "check", recipe)
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "3 problems" in message and "export[0]" not in message  # its own export fits
    for index, kind, distribution in (
        (1, "onnx", "loraplug-onnx"),
        (2, "int8", "loraplug-quant"),
        (3, "bnb-8bit", "loraplug-quant"),
    ):
        assert (
            f"`export[{index}].kind` = '{kind}' (" in message
            and f"the {kind} export ({distribution}) cannot export the model kind 'mute' (loraplug-thirdparty): it needs the "
            "model as one deployable module, which loraplug-thirdparty does not hand exporters (it does not implement "
            "loraplug_deployable); export kinds that fit mute: mute-weights"
            in message
        )
    run = run_cli(
        "run", recipe
    )  # the same refusal, before the model (which this plugin cannot even build) loads
    assert run.exit_code == 2 and "does not implement loraplug_deployable" in " ".join(run.stderr.split())
    assert not (tmp_path / "runs").exists()


def test_a_model_plugin_that_implements_loraplug_deployable_is_exported_by_onnx_and_int8(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = PluginHost.load(extra=[ExtraPlugin(with_deployable(third_party(*MUTE)), "loraplug-thirdparty")])
    monkeypatch.setattr("loraplug.plugins._loaded", host)
    # bnb-8bit too: the model kind does not declare what its deployable view provides, so that is never checked.
    result = run_cli("recipe", "check", mute_recipe(tmp_path, ["mute-weights", "onnx", "int8", "bnb-8bit"]))
    assert result.exit_code == 0, result.output


def test_an_export_whose_options_fail_still_has_its_needs_checked(tmp_path: Path, with_plugin: Any) -> None:
    with_plugin(*MUTE)
    result = run_cli("recipe", "check", mute_recipe(tmp_path, [{"kind": "onnx", "opset": 1}]))
    assert result.exit_code == 2
    assert "2 problems" in result.stderr and "export[0].opset" in result.stderr
    assert "does not implement loraplug_deployable" in " ".join(result.stderr.split())


def test_loraplug_export_refuses_an_export_the_runs_model_kind_cannot_feed_before_it_loads(
    tmp_path: Path, with_plugin: Any
) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    with_plugin(*MUTE)
    # A finished run of the mute model kind: its resolved recipe and its adapter's weights.
    run_dir = tmp_path / "runs" / "mute"
    (run_dir / "adapter").mkdir(parents=True)
    mute_recipe(tmp_path, []).rename(run_dir / "recipe.toml")
    save_file({"w": np.zeros(2, dtype=np.float32)}, str(run_dir / "adapter" / "adapter.safetensors"))
    result = run_cli("export", run_dir, "--kind", "onnx")
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert (
        "The run's model cannot be exported as onnx: the onnx export (loraplug-onnx) cannot export the model kind 'mute'"
        in message
    )
    assert (
        "does not implement loraplug_deployable" in message
        and "export kinds that fit mute: mute-weights" in message
    )
    assert "Traceback" not in result.stderr and not (run_dir / "exports").exists()


def test_bitsandbytes_exports_refuse_a_model_kind_that_provides_no_from_pretrained(tmp_path: Path) -> None:
    exports = [{"kind": "onnx"}, {"kind": "int8"}, {"kind": "bnb-8bit"}, {"kind": "bnb-4bit"}]
    result = run_cli("recipe", "check", tiny_sd_recipe(tmp_path, export=exports))
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "2 problems" in message and "export[0]" not in message and "export[1]" not in message
    assert (
        "`export[2].kind` = 'bnb-8bit' (" in message
        and "the bnb-8bit export (loraplug-quant) cannot export the model kind 'stable-diffusion' (loraplug-diffusion): it "
        "needs a model saved with save_pretrained and loaded back with from_pretrained (a transformers model), which the "
        "model kind does not provide (it declares provides: nothing); export kinds that fit stable-diffusion: diffusers, "
        "int8, kohya, merged, onnx"
        in message
    )
    assert "`export[3].kind` = 'bnb-4bit' (" in message
    host = PluginHost.load()
    with pytest.raises(LoraplugError, match="cannot export the model kind 'stable-diffusion'"):
        export_section(
            host, "bnb-4bit", [], name="bnb-4bit", model_kind="stable-diffusion", adapter_kind="lora"
        )
    export_section(
        host, "int8", [], name="int8", model_kind="stable-diffusion", adapter_kind="lora"
    )  # accepted
    export_section(
        host, "bnb-4bit", [], name="bnb-4bit", model_kind="causal-lm", adapter_kind="lora"
    )  # provides from_pretrained


def test_an_export_need_of_its_own_is_met_only_by_a_model_kind_that_provides_it(
    lm_recipe: Any, with_plugin: Any
) -> None:
    gguf = KindSpec(
        "export", "gguf", NoOptions, "llama.cpp's format", needs=("deployable", "gguf-architecture")
    )
    with_plugin(gguf)
    result = run_cli("recipe", "check", lm_recipe(export=[{"kind": "gguf"}]))
    assert result.exit_code == 2  # causal-lm declares what it provides, and that is not among it
    assert (
        "it needs 'gguf-architecture', which the model kind does not provide (it declares provides: from_pretrained)"
        in " ".join(result.stderr.split())
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            KindSpec("model", "x", NoOptions, needs="deployable"),
            "declared `needs` on model:x: only export kinds declare it",
        ),
        (
            KindSpec("export", "x", NoOptions, provides="from_pretrained"),
            "declared `provides` on export:x: only model kinds declare it",
        ),
        (
            KindSpec("data", "x", NoOptions, accepts="chat"),
            "declared `accepts` on data:x: only model, filter and objective kinds declare it",
        ),
        (
            KindSpec("export", "x", NoOptions, needs=()),
            "`needs` = () on export:x: it must be a non-empty tuple of names",
        ),
        (
            KindSpec("model", "x", NoOptions, provides=("",)),
            "`provides` = ('',) on model:x: it must be a tuple of names",
        ),
    ],
)
def test_a_misplaced_or_empty_need_or_provision_is_a_broken_plugin(spec: KindSpec, message: str) -> None:
    host = PluginHost.load(entry_points=False, extra=[ExtraPlugin(third_party(spec), "loraplug-thirdparty")])
    record = next(r for r in host.records if r.distribution == "loraplug-thirdparty")
    assert record.status == "error" and message in (record.error or "")


def test_a_model_kind_may_declare_it_provides_nothing() -> None:
    spec = KindSpec("model", "x", NoOptions, provides=())
    host = PluginHost.load(entry_points=False, extra=[ExtraPlugin(third_party(spec), "loraplug-thirdparty")])
    assert next(r for r in host.records if r.distribution == "loraplug-thirdparty").status != "error"
    assert KindSpec("export", "y", NoOptions, needs="deployable").needs == ("deployable",)


def test_an_image_filter_on_data_without_images_is_refused(lm_recipe: Any, with_plugin: Any) -> None:
    with_plugin(
        KindSpec("filter", "aspect", NoOptions, "images of an odd aspect ratio", accepts="caption-image")
    )
    clean = {"min_resolution": 64, "image_dedup_distance": 2, "filters": [{"kind": "aspect"}]}
    result = run_cli("recipe", "check", lm_recipe(data={"clean": clean}))
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "3 problems" in message
    for key, kind, distribution in (
        ("data.clean.min_resolution", "min_resolution", "loraplug"),
        ("data.clean.filters[0]", "aspect", "loraplug-thirdparty"),
        ("data.clean.image_dedup_distance", "image_dedup", "loraplug"),
    ):
        assert (
            f"`{key}` (" in message
            and f"the {kind} filter ({distribution}) reads caption-image records, and the data kind 'jsonl' "
            "(loraplug-causal-lm) produces chat records; remove the filter for this data"
            in message
        )


def test_an_image_filter_on_image_data_is_accepted(tmp_path: Path) -> None:
    recipe = tiny_sd_recipe(tmp_path, data={"clean": {"min_resolution": 16, "image_dedup_distance": 0}})
    result = run_cli("recipe", "check", recipe)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("stage", "spec", "change", "key"),
    [
        (
            "data",
            KindSpec("data", "sd-captions", NoOptions, models=("stable-diffusion",)),
            {"data": {"kind": "sd-captions"}},
            "data.kind",
        ),
        (
            "filter",
            KindSpec("filter", "nsfw", NoOptions, models=("stable-diffusion",)),
            {"data": {"clean": {"filters": [{"kind": "nsfw"}]}}},
            "data.clean.filters[0].kind",
        ),
        (
            "adapter",
            KindSpec("adapter", "ia3", NoOptions, models=("stable-diffusion",)),
            {"adapter": {"kind": "ia3"}},
            "adapter.kind",
        ),
        (
            "optimizer",
            KindSpec("optimizer", "sd-adam", NoOptions, models=("stable-diffusion",)),
            {"train": {"optimizer": "sd-adam"}},
            "train.optimizer",
        ),
        (
            "metric",
            KindSpec("metric", "clip_score", NoOptions, models=("stable-diffusion",), higher_is_better=True),
            {"eval": {"metrics": ["clip_score"]}},
            "eval.metrics[0]",
        ),
        (
            "export",
            KindSpec("export", "safetensors-unet", NoOptions, models=("stable-diffusion",)),
            {"export": [{"kind": "safetensors-unet"}]},
            "export[0].kind",
        ),
    ],
)
def test_a_kind_declared_for_another_model_kind_is_refused(
    stage: str, spec: KindSpec, change: dict[str, Any], key: str, lm_recipe: Any, with_plugin: Any
) -> None:
    with_plugin(spec)
    result = run_cli("recipe", "check", lm_recipe(**change))
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert f"`{key}` = '{spec.name}' (" in message
    assert (
        f"The {stage} kind '{spec.name}' does not work with model kind 'causal-lm'; installed: {stage}:{spec.name} "
        "(for stable-diffusion) from loraplug-thirdparty" in message
    )


def test_a_first_party_export_for_another_model_kind_is_refused(lm_recipe: Any) -> None:
    result = run_cli("recipe", "check", lm_recipe(export=[{"kind": "kohya"}, {"kind": "diffusers"}]))
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert (
        "`export[0].kind` = 'kohya' (" in message
        and "The export kind 'kohya' does not work with model kind 'causal-lm'" in message
    )
    assert "`export[1].kind` = 'diffusers' (" in message


def test_a_first_party_metric_for_another_model_kind_is_refused(tmp_path: Path) -> None:
    result = run_cli("recipe", "check", tiny_sd_recipe(tmp_path, eval={"metrics": ["perplexity"]}))
    assert result.exit_code == 2
    assert "The metric kind 'perplexity' does not work with model kind 'stable-diffusion'" in " ".join(
        result.stderr.split()
    )
