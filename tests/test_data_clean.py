"""[data.clean]: each filter removes what it should, reports counts and examples, and errors name the key.

Runs train the toy regressor on rows that carry a ``text``; the causal LM's chat records (empty
responses, token limits) are plugins/causal-lm/tests/test_data_clean.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraplug.bundles import DataBundle
from loraplug.data import CleanOptions, clean
from loraplug.testing import run_cli


def _chat(i: int, prompt: str, response: str) -> dict:
    return {
        "id": f"t:{i}",
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
    }


def _texts(toy_rows_of, texts: list[str]) -> list[dict]:
    """Toy rows carrying ``texts`` as their ``text``, which the filters read through ``record_text``."""
    return [{**row, "text": text} for row, text in zip(toy_rows_of(len(texts)), texts, strict=True)]


def _run(toy_recipe_file, jsonl_file, rows, clean_table: dict, **changes):
    data = jsonl_file("clean.jsonl", rows)
    recipe = toy_recipe_file(
        data={"path": str(data), "val_path": None, "clean": clean_table, **changes.pop("data", {})},
        train={"max_steps": 1},
        eval={"sample_prompts": []},
        export=[],
    )
    return run_cli("run", recipe)


def _report(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "runs" / "tiny" / "data_report.json").read_text())


def _removed(report: dict, split: str = "train") -> dict[str, int]:
    return {f["name"]: f["removed"] for f in report["splits"][split]["filters"]}


def test_include_keeps_only_matching_samples(
    tmp_path: Path, toy_recipe_file, jsonl_file, toy_rows_of
) -> None:
    rows = _texts(toy_rows_of, [f"rain {i} wet" for i in range(6)] + [f"sun {i} dry" for i in range(4)])
    result = _run(toy_recipe_file, jsonl_file, rows, {"include": ["^rain"]})
    assert result.exit_code == 0, result.output
    assert _removed(_report(tmp_path))["include"] == 4


def test_near_duplicates_are_removed_with_minhash(
    tmp_path: Path, toy_recipe_file, jsonl_file, toy_rows_of
) -> None:
    base = "The forecast for Bergen on Monday is steady rain with a gentle westerly breeze and nine degrees."
    texts = [
        f"forecast? {base}",
        f"forecast? {base.replace('nine', 'ten')}",  # near-duplicate
        "forecast? Clear skies over Oslo all week, cold nights and sunny afternoons.",
    ] + [f"q{i} answer number {i} is unrelated {i * 7}" for i in range(6)]
    result = _run(toy_recipe_file, jsonl_file, _texts(toy_rows_of, texts), {"near_dedup_threshold": 0.7})
    assert result.exit_code == 0, result.output
    report = _report(tmp_path)
    assert _removed(report)["near_dedup"] == 1
    example = next(f for f in report["splits"]["train"]["filters"] if f["name"] == "near_dedup")["examples"][
        0
    ]
    assert example["id"] == "clean.jsonl:2" and example["reason"].endswith("similar to clean.jsonl:1")


def test_training_copies_of_validation_samples_are_removed() -> None:
    val = [_chat(100, "What is the weather?", "Rain.")]
    train = [_chat(1, "what is the  WEATHER?", "rain."), _chat(2, "Other", "Sun.")]
    cleaned = clean(DataBundle(train=train, val=val), CleanOptions())
    assert [r["id"] for r in cleaned.train] == ["t:2"]
    assert cleaned.report is not None
    assert cleaned.report.splits["train"].filters[-1].examples[0].reason == "same text as t:100"


def test_cleaning_everything_away_is_an_error(toy_recipe_file, jsonl_file, toy_rows_of) -> None:
    rows = _texts(toy_rows_of, [f"p{i} short" for i in range(4)])
    result = _run(toy_recipe_file, jsonl_file, rows, {"min_chars": 1000})
    assert result.exit_code == 2
    assert "Cleaning removed all 4 training samples (length_chars 4)" in result.stderr
    assert "loraplug data inspect" in result.stderr


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"min_chars": -1}, "`data.clean.min_chars` = -1: Input should be greater than or equal to 0"),
        ({"max_char": 10}, "unknown key `data.clean.max_char`"),
        ({"exclude": ["(unclosed"]}, "`data.clean.exclude[0]` = '(unclosed': not a valid regular expression"),
        ({"min_chars": 50, "max_chars": 10}, "min_chars (50) is larger than max_chars (10)"),
    ],
)
def test_bad_clean_options_name_the_dotted_key(toy_recipe_file, table: dict, message: str) -> None:
    result = run_cli("recipe", "check", toy_recipe_file(data={"clean": table}))
    assert result.exit_code == 2
    assert message in result.stderr


def test_a_misspelt_core_data_key_gets_a_suggestion(toy_recipe_file) -> None:
    result = run_cli("recipe", "check", toy_recipe_file(data={"balance_bye": "label"}))
    assert result.exit_code == 2
    assert "did you mean `data.balance_by`?" in result.stderr


def test_the_resolved_recipe_keeps_the_clean_table(toy_recipe_file) -> None:
    result = run_cli("recipe", "check", "--resolved", toy_recipe_file(data={"clean": {"max_chars": 500}}))
    assert result.exit_code == 0, result.output
    assert "[data.clean]" in result.stdout and "max_chars = 500" in result.stdout


def test_a_stream_is_cleaned_afresh_on_every_pass() -> None:
    records = [_chat(1, "a", "b"), _chat(2, "a", "b"), _chat(3, "c", " ")]
    cleaned = clean(DataBundle(train=_Replayable(records)), CleanOptions())
    first, second = [r["id"] for r in cleaned.train], [r["id"] for r in cleaned.train]
    assert first == second == ["t:1"]


class _Replayable:
    """An iterable (not a sequence) that can be read again, like a stream over shards."""

    def __init__(self, records: list[dict]) -> None:
        self.records = records

    def __iter__(self):
        return iter(self.records)


def _image(path: Path, size: tuple[int, int], seed: int) -> Path:
    """A seeded 8×8 pattern of grey blocks scaled to ``size``: the same seed looks the same at any size."""
    import random

    from PIL import Image

    rng = random.Random(seed)
    blocks = Image.new("L", (8, 8))
    blocks.putdata([rng.randrange(256) for _ in range(64)])
    blocks.resize(size, Image.Resampling.NEAREST).save(path)
    return path


def test_image_filters_drop_small_and_perceptually_identical_images(tmp_path: Path) -> None:
    records = [
        {"id": "a.png", "image": _image(tmp_path / "a.png", (128, 128), 1), "caption": "blocks"},
        {
            "id": "b.png",
            "image": _image(tmp_path / "b.png", (256, 256), 1),
            "caption": "the same blocks, larger",
        },
        {"id": "c.png", "image": _image(tmp_path / "c.png", (128, 128), 2), "caption": "other blocks"},
        {"id": "tiny.png", "image": _image(tmp_path / "tiny.png", (32, 48), 3), "caption": "too small"},
    ]
    cleaned = clean(DataBundle(train=records), CleanOptions(min_resolution=64, image_dedup_distance=4))
    assert [r["id"] for r in cleaned.train] == ["a.png", "c.png"]
    assert cleaned.report is not None
    counts = {
        f.name: (f.removed, [e.reason for e in f.examples]) for f in cleaned.report.splits["train"].filters
    }
    assert counts["min_resolution"] == (1, ["32×48 px"])
    assert counts["image_dedup"][0] == 1 and counts["image_dedup"][1][0].endswith("from a.png")


# --- text records, unreadable records and filters from plugins ------------------------------------


def test_text_records_are_read_through_the_one_accessor() -> None:
    # {"text": ...} records (a classifier's data): exclude and dedup used to remove nothing here.
    records = [
        {"id": "r:1", "text": "Rain all day in Bergen", "label": "rain"},
        {"id": "r:2", "text": "rain  ALL day in bergen", "label": "rain"},  # the same text once normalised
        {"id": "r:3", "text": "Buy cheap pills at spam.example", "label": "sun"},
        {"id": "r:4", "text": "Sun over Rome", "label": "sun"},
    ]
    cleaned = clean(DataBundle(train=records), CleanOptions(exclude=["spam\\."]))
    assert [r["id"] for r in cleaned.train] == ["r:1", "r:4"]
    assert cleaned.report is not None
    removed = {f.name: [e.reason for e in f.examples] for f in cleaned.report.splits["train"].filters}
    assert removed["exclude"] == ["matches /spam\\./"] and removed["exact_dedup"] == ["same text as r:1"]


def test_a_filter_that_cannot_read_a_record_is_an_error_naming_it() -> None:
    from loraplug.errors import LoraplugError

    rows = [
        {"id": "t:1", "features": [1.0, 2.0], "target": 3.0},
        {"id": "t:2", "features": [1.0, 2.0], "target": 3.0},
    ]
    with pytest.raises(LoraplugError) as caught:
        clean(DataBundle(train=rows), CleanOptions(exclude=["x"]))
    assert "The exclude filter cannot read sample t:1: it has no text" in caught.value.what
    assert caught.value.where == "data.clean.exclude"
    with pytest.raises(
        LoraplugError, match="The min_resolution filter cannot read sample t:1: it has no image"
    ):
        clean(DataBundle(train=rows), CleanOptions(min_resolution=64))
    # exact_dedup (on by default) compares a record without text or image by all its fields
    cleaned = clean(DataBundle(train=rows), CleanOptions())
    assert [r["id"] for r in cleaned.train] == ["t:1"]


PLUGIN_FILTER = """
from loraplug import KindSpec, Options, hookimpl, record_text

class DigitsOptions(Options):
    at_most: int = 3

class TooManyDigits:
    def __init__(self, at_most):
        self.at_most = at_most
        self.description = f"more than {at_most} digits"

    def reason(self, record):
        digits = sum(c.isdigit() for c in record_text(record) or "")
        return f"{digits} digits" if digits > self.at_most else None

@hookimpl
def loraplug_register_kinds(register):
    register(KindSpec("filter", "max_digits", DigitsOptions, "samples with too many digits"))

@hookimpl
def loraplug_build_filter(kind, options, ctx):
    return TooManyDigits(options.at_most)
"""


def test_a_plugins_filter_runs_from_a_data_clean_filters_table(
    tmp_path: Path, toy_recipe_file, jsonl_file, toy_rows_of
) -> None:
    import subprocess

    from loraplug.testing import plugin_dist, run_with_site

    site = plugin_dist(
        tmp_path / "site", distribution="loraplug-digits", module="loraplug_digits", source=PLUGIN_FILTER
    )
    rows = _texts(toy_rows_of, [f"question {i} answer {i}" for i in range(8)] + ["call 5551234 no"])
    clean_table = {
        "filters": [{"kind": "max_digits", "at_most": 2}, {"kind": "exclude", "patterns": ["^question 7"]}]
    }
    recipe = toy_recipe_file(
        data={"path": str(jsonl_file("d.jsonl", rows)), "val_path": None, "clean": clean_table},
        train={"max_steps": 1}, eval={"sample_prompts": []}, export=[],
    )  # fmt: skip

    def loraplug(*args: str) -> subprocess.CompletedProcess[str]:
        return run_with_site(site, *args, cwd=tmp_path)

    ran = loraplug("run", str(recipe))
    assert ran.returncode == 0, ran.stderr
    assert "[loraplug hook] loraplug_build_filter -> loraplug-digits:loraplug_digits" in ran.stderr
    report = _report(tmp_path)
    assert _removed(report) == {"empty_responses": 0, "max_digits": 1, "exclude": 1, "exact_dedup": 0}
    example = next(f for f in report["splits"]["train"]["filters"] if f["name"] == "max_digits")["examples"][
        0
    ]
    assert example == {"id": "d.jsonl:9", "text": "call 5551234 no", "reason": "7 digits"}
    resolved = (tmp_path / "runs" / "tiny" / "recipe.toml").read_text()
    assert '[[data.clean.filters]]\nkind = "max_digits"\nat_most = 2' in resolved  # defaults written out

    bad = toy_recipe_file(
        data={"clean": {"filters": [{"kind": "max_digit"}, {"kind": "max_digits", "at_mots": 1}]}}
    )
    checked = loraplug("recipe", "check", str(bad))
    assert checked.returncode == 2
    assert (
        "`data.clean.filters[0].kind` = 'max_digit'" in checked.stderr
        and "Did you mean 'max_digits'?" in checked.stderr
    )
    assert (
        "unknown key `data.clean.filters[1].at_mots`" in checked.stderr
        and "did you mean `data.clean.filters[1].at_most`?" in checked.stderr
    )
