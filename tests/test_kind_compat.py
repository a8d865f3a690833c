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


def test_jsonl_data_for_stable_diffusion_is_refused_before_anything_loads(tmp_path: Path, jsonl_file: Any, chat_rows: Any) -> None:
    data = jsonl_file("chat.jsonl", chat_rows(4))
    recipe = tiny_sd_recipe(tmp_path, data={"kind": "jsonl", "path": str(data)})
    check = run_cli("recipe", "check", recipe)
    assert check.exit_code == 2
    assert "`data.kind` = 'jsonl' (" in check.stderr
    assert "the data kind 'jsonl' (loraplug-causal-lm) produces chat records" in check.stderr
    assert "the model kind 'stable-diffusion' (loraplug-diffusion) trains on caption-image records" in check.stderr
    assert "data kinds that produce them: imagefolder, webdataset" in check.stderr
    run = run_cli("run", recipe)  # the same refusal, and no run directory: nothing was loaded
    assert run.exit_code == 2 and "produces chat records" in run.stderr
    assert not (tmp_path / "runs").exists()


def test_image_data_for_a_causal_lm_is_refused(tmp_path: Path, lm_recipe: Any) -> None:
    draw_images(tmp_path / "images", 2)
    result = run_cli("recipe", "check", lm_recipe(data={"kind": "imagefolder", "path": str(tmp_path / "images")}))
    assert result.exit_code == 2
    assert "the data kind 'imagefolder' (loraplug-diffusion) produces caption-image records" in result.stderr
    assert "'causal-lm' (loraplug-causal-lm) trains on chat records; data kinds that produce them: jsonl, webdataset" in result.stderr


def test_a_data_kind_that_produces_none_of_the_shapes_a_model_accepts_is_refused(lm_recipe: Any, with_plugin: Any) -> None:
    with_plugin(KindSpec("data", "reviews", NoOptions, "labelled reviews", produces="labelled-text"))
    result = run_cli("recipe", "check", lm_recipe_with_data(lm_recipe, {"kind": "reviews"}))
    assert result.exit_code == 2
    assert "the data kind 'reviews' (loraplug-thirdparty) produces labelled-text records" in result.stderr


def test_undeclared_kinds_are_never_checked(lm_recipe: Any, with_plugin: Any) -> None:
    with_plugin(KindSpec("data", "mystery", NoOptions, "a third party's data kind that declares no shape"))
    result = run_cli("recipe", "check", lm_recipe_with_data(lm_recipe, {"kind": "mystery"}))
    assert result.exit_code == 0, result.output


def test_an_export_refuses_an_adapter_kind_it_does_not_declare(lm_recipe: Any, with_plugin: Any) -> None:
    with_plugin(KindSpec("export", "gguf-lora", NoOptions, "LoRA pairs for llama.cpp", models=("causal-lm",), adapters=("lora",)))
    ok = run_cli("recipe", "check", lm_recipe(export=[{"kind": "gguf-lora"}]))
    assert ok.exit_code == 0, ok.output
    result = run_cli("recipe", "check", lm_recipe(adapter={"kind": "lokr"}, export=[{"kind": "merged"}, {"kind": "gguf-lora"}]))
    assert result.exit_code == 2
    assert "`export[1].kind` = 'gguf-lora' (" in result.stderr
    assert "the gguf-lora export (loraplug-thirdparty) does not handle adapter kind 'lokr' (only lora)" in result.stderr
    assert "export kinds for causal-lm that handle lokr: " in result.stderr and "merged, " in result.stderr
    assert "export[0]" not in result.stderr  # merged handles LoKr


def test_an_adapter_whose_options_fail_still_has_its_exports_checked(lm_recipe: Any, with_plugin: Any) -> None:
    with_plugin(KindSpec("export", "gguf-lora", NoOptions, "LoRA pairs for llama.cpp", models=("causal-lm",), adapters=("lora",)))
    result = run_cli("recipe", "check", lm_recipe(adapter={"kind": "loha", "r": 0}, export=[{"kind": "gguf-lora"}]))
    assert result.exit_code == 2
    assert "2 problems" in result.stderr and "adapter.r" in result.stderr and "does not handle adapter kind 'loha'" in result.stderr


def test_exporting_a_finished_run_checks_its_adapter_kind() -> None:
    host = PluginHost.load()
    with pytest.raises(LoraplugError) as caught:
        export_section(host, "diffusers", [], name="diffusers", model_kind="stable-diffusion", adapter_kind="lokr")
    assert "does not handle adapter kind 'lokr'" in caught.value.what and "kohya, merged" in caught.value.what
    export_section(host, "kohya", [], name="kohya", model_kind="stable-diffusion", adapter_kind="lokr")  # accepted


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (KindSpec("adapter", "x", NoOptions, produces="chat"), "declared `produces` on adapter:x: only data kinds declare it"),
        (KindSpec("data", "x", NoOptions, adapters=("lora",)), "declared `adapters` on data:x: only export kinds declare it"),
        (KindSpec("export", "x", NoOptions, accepts=("chat",)), "declared `accepts` on export:x: only model kinds declare it"),
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
    assert {"data: jsonl (produces chat)", "model: causal-lm (accepts chat)"} <= lines
    assert "export: diffusers (stable-diffusion; adapters lora)" in lines
    table = run_cli("plugins", "list")
    assert table.exit_code == 0 and "produces" in table.stdout and "accepts" in table.stdout
    listed = {(p["distribution"], k["stage"], k["kind"]): k for p in json.loads(run_cli("plugins", "list", "--json").stdout) for k in p["kinds"]}
    assert listed["loraplug-causal-lm", "data", "jsonl"]["produces"] == ["chat"]
    assert listed["loraplug-diffusion", "model", "stable-diffusion"]["accepts"] == ["caption-image"]
    assert listed["loraplug-diffusion", "export", "diffusers"]["adapters"] == ["lora"]
    assert listed["loraplug-diffusion", "export", "kohya"]["adapters"] == ["lora", "loha", "lokr"]
    assert listed["loraplug-causal-lm", "export", "merged"]["adapters"] == ["lora", "loha", "lokr"]
    assert set(listed["loraplug-webdataset", "data", "webdataset"]["produces"]) == {"caption-image", "chat"}
    assert "produces" not in listed["loraplug-causal-lm", "adapter", "lora"]  # only what a kind declares


def test_recipe_keys_notes_what_each_kind_fits() -> None:
    result = run_cli("recipe", "keys", "--markdown")
    assert result.exit_code == 0
    assert "(adapters: lora)" in result.stdout and "(produces: chat)" in result.stdout and "(accepts: caption-image)" in result.stdout


def test_the_declaring_fit_example_in_docs_plugins_md_runs(tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    text = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- example: declaring fit -->\n```python\n(.*?)```", text, re.S)
    assert match, "docs/plugins.md lost its declaring-fit example"
    (tmp_path / "example.py").write_text(match.group(1), encoding="utf-8")
    proc = subprocess.run([sys.executable, "example.py"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:3] == ["['jsonl', 'webdataset']", "True", "False"]
