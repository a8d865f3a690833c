"""loraplug.toolkit: the helpers every model plugin shares, public and light to import."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from pydantic import Field, ValidationError, field_validator

from loraplug import LoraplugError, NoOptions, Options, toolkit
from loraplug.toolkit import Preset

ROOT = Path(__file__).parents[1]

IMPORT_PROBE = """
import sys
from loraplug.toolkit import *  # noqa: F403
import loraplug.toolkit
missing = [name for name in loraplug.toolkit.__all__ if not hasattr(loraplug.toolkit, name)]
heavy = sorted(m for m in ("torch", "transformers", "tokenizers", "diffusers", "peft", "accelerate") if m in sys.modules)
print("MISSING=" + ",".join(missing) + " HEAVY=" + ",".join(heavy))
"""


def test_every_toolkit_name_imports_without_a_modality_library() -> None:
    proc = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "MISSING= HEAVY=", proc.stdout


def test_the_first_party_plugins_keep_no_copy_of_a_toolkit_helper() -> None:
    copies = re.compile(
        r"^(def (locate|pretrained_source|model_load_error|require_package|hold_out)\b|DTYPES\s*=|TOLERANCES\s*=|StepFn\s*=)",
        re.M,
    )
    found = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for path in sorted((ROOT / "plugins").glob("*/loraplug_*/*.py"))
        for match in copies.finditer(path.read_text(encoding="utf-8"))
        if not match.group(0).startswith(
            "def locate"
        )  # a plugin's locate(options, cache_dir) binds its presets
    ]
    assert found == []


def _build_marker(target: Path) -> None:
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    count = target.parent / "builds"
    count.write_text(str(int(count.read_text()) + 1 if count.exists() else 1))


def test_a_preset_is_built_once_and_rebuilt_when_its_config_changes(tmp_path: Path) -> None:
    preset = Preset("tiny-test", {"width": 4, "version": 1}, _build_marker)
    first = toolkit.locate("tiny-test", tmp_path, [preset])
    assert toolkit.locate("tiny-test", tmp_path, [preset]) == first
    assert (tmp_path / "presets" / "builds").read_text() == "1"
    assert Path(first).parent == tmp_path / "presets" and Path(first).name.startswith("tiny-test-")
    changed = Preset("tiny-test", {"width": 8, "version": 1}, _build_marker)
    assert toolkit.locate("tiny-test", tmp_path, [changed]) != first
    assert (tmp_path / "presets" / "builds").read_text() == "2"


def test_locate_hands_a_hub_id_or_directory_through(tmp_path: Path) -> None:
    preset = Preset("tiny-test", {}, _build_marker)
    assert toolkit.locate("org/model", tmp_path, [preset]) == "org/model"
    assert not (tmp_path / "presets").exists()
    assert toolkit.local_dir("org/model") is None
    assert toolkit.local_dir(str(tmp_path)) == tmp_path


class _ModelOptions(Options):
    pretrained: str = Field(description="preset, hub id or directory")
    fast: bool = Field(False, description="needs a package that is not installed")

    _pretrained = field_validator("pretrained")(toolkit.pretrained_source(["tiny-test"]))

    @field_validator("fast")
    @classmethod
    def _needs(cls, value: bool) -> bool:
        if value:
            toolkit.require_package("loraplug_no_such_package", "fast", "pip install no-such-package")
        return value


def test_pretrained_source_and_require_package_fail_validation_with_the_fix(tmp_path: Path) -> None:
    assert _ModelOptions(pretrained="tiny-test").pretrained == "tiny-test"
    assert _ModelOptions(pretrained=str(tmp_path)).pretrained == str(tmp_path)
    with pytest.raises(ValidationError, match="model directory not found"):
        _ModelOptions(pretrained=str(tmp_path / "absent"))
    with pytest.raises(
        ValidationError,
        match=r"fast needs loraplug_no_such_package, which is not installed: `pip install no-such-package`",
    ):
        _ModelOptions(pretrained="tiny-test", fast=True)
    with pytest.raises(LoraplugError, match="needs loraplug_no_such_package") as raised:
        toolkit.require_installed("loraplug_no_such_package", "This export", "pip install no-such-package")
    assert raised.value.fix == "`pip install no-such-package`"


def test_model_load_error_says_what_a_directory_must_hold(tmp_path: Path) -> None:
    error = toolkit.model_load_error(
        "model", str(tmp_path), tmp_path, OSError("no config"), layout="config.json", preset="tiny-test"
    )
    assert error.where == "model.pretrained" and "Check that the directory holds config.json" in (
        error.fix or ""
    )


def test_dtype_names_map_to_torch_dtypes_and_back() -> None:
    import torch

    assert [toolkit.torch_dtype(n) for n in toolkit.DTYPE_NAMES] == [
        torch.float32,
        torch.bfloat16,
        torch.float16,
    ]
    assert [toolkit.dtype_name(d) for d in (torch.bfloat16, "float16")] == ["bfloat16", "float16"]
    with pytest.raises(ValueError, match="unknown dtype"):
        toolkit.torch_dtype("auto")
    with pytest.raises(ValueError, match="unknown dtype"):
        toolkit.dtype_name(torch.int8)


def test_parity_tolerance_is_the_users_or_the_least_precise_dtypes() -> None:
    import torch

    assert toolkit.parity_tolerance("float32") == 1e-3
    assert toolkit.parity_tolerance("float32", torch.float16) == 2e-2
    assert toolkit.parity_tolerance("bfloat16", "float16") == 6e-2
    assert toolkit.parity_tolerance("auto", None) == 1e-3
    assert toolkit.parity_tolerance("bfloat16", given=1e-5) == 1e-5


def test_hold_out_is_seeded_disjoint_and_keeps_order() -> None:
    records = list(range(20))
    train, val = toolkit.hold_out(records, 0.25, seed=1)
    assert (train, val) == toolkit.hold_out(records, 0.25, seed=1)
    assert len(val) == 5 and sorted(train + val) == records and train == sorted(train) and val == sorted(val)
    assert toolkit.hold_out(records, 0.25, seed=2)[1] != val
    assert toolkit.hold_out([0, 1], 0.01, seed=0)[1] != []  # at least one from two
    assert toolkit.hold_out([0], 0.5, seed=0) == ([0], [])
    assert toolkit.hold_out(records, 0.0, seed=0) == (records, [])


def test_quiet_libraries_silences_their_warnings_unless_debugging(monkeypatch: pytest.MonkeyPatch) -> None:
    def warn_from(module: str) -> list[warnings.WarningMessage]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            toolkit.quiet_libraries.cache_clear()
            toolkit.quiet_libraries("loraplug_fake_lib")
            warnings.warn_explicit("deprecated", FutureWarning, "x.py", 1, module=module)
        return caught

    assert warn_from("loraplug_fake_lib.sub") == []
    assert len(warn_from("other_lib.sub")) == 1
    monkeypatch.setenv("LORAPLUG_DEBUG", "1")
    assert len(warn_from("loraplug_fake_lib.sub")) == 1


def test_no_options_accepts_no_key() -> None:
    assert NoOptions().model_dump() == {}
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        NoOptions.model_validate({"typo": 1})


def test_the_toolkit_example_in_docs_plugins_md_runs(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- example: toolkit -->\n```python\n(.*?)```", text, re.S)
    assert match, "docs/plugins.md lost its toolkit example"
    (tmp_path / "example.py").write_text(match.group(1), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "example.py"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    # Each line the example prints, as its comments promise.
    promised = [
        line.split("#", 1)[1].strip()
        for line in match.group(1).splitlines()
        if line.lstrip().startswith("print(") and "#" in line
    ]
    printed = proc.stdout.splitlines()
    assert len(printed) == len(promised)
    for got, want in zip(printed, promised, strict=True):
        assert got.startswith(want.removesuffix("…`").rstrip()), (got, want)
