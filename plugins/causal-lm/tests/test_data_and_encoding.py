"""JSONL data: formats, malformed lines, masking, truncation — through the CLI and the plugin's API."""

from __future__ import annotations

import json
from pathlib import Path

from loraplug.testing import run_cli


def test_malformed_line_is_an_error_naming_file_and_line(lm_recipe, jsonl_file, chat_rows) -> None:
    rows = [json.dumps(r) for r in chat_rows(5)]
    rows[3] = '{"prompt": "unterminated'
    data = jsonl_file("bad.jsonl", rows)
    result = run_cli("run", lm_recipe(data={"path": str(data)}))
    assert result.exit_code == 2
    assert "Line 4 of bad.jsonl is malformed: not valid JSON" in result.stderr
    assert f"{data}:4" in result.stderr
    assert 'on_error = "skip"' in result.stderr
    assert "Traceback" not in result.output


def test_a_line_that_is_not_utf8_is_a_bad_line_named_by_number(tmp_path: Path, chat_rows) -> None:
    import pytest

    from loraplug import LoraplugError
    from loraplug_causal_lm.jsonl import read_jsonl

    lines = [json.dumps(r).encode() for r in chat_rows(4)]
    lines[2] = '{"prompt": "café", "response": "ok"}'.encode("latin-1")  # saved by an editor in Latin-1
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")  # with a byte-order mark, as Notepad writes
    with pytest.raises(LoraplugError, match="Line 3 of mixed.jsonl is malformed: not UTF-8 text") as caught:
        read_jsonl(path, skip_bad=False)
    assert caught.value.where == f"{path}:3"
    records, skipped = read_jsonl(path, skip_bad=True)
    assert len(records) == 3 and skipped == ["line 3: not UTF-8 text (byte 16); save the file as UTF-8"]


def test_a_line_over_the_length_limit_is_a_bad_line_read_in_bounded_memory(
    tmp_path: Path, monkeypatch, lm_recipe, chat_rows
) -> None:
    import tracemalloc

    from loraplug_causal_lm import jsonl
    from loraplug_causal_lm.options import JsonlOptions

    assert f"longer than {jsonl.MAX_LINE_BYTES >> 20} MiB" in str(
        JsonlOptions.model_fields["on_error"].description
    )  # documented
    monkeypatch.setattr(jsonl, "MAX_LINE_BYTES", 4096)  # 64 MiB in use; a test writes no gigabytes
    rows = [json.dumps(r) for r in chat_rows(12)]
    huge = json.dumps({"prompt": "q", "response": "x" * (16 << 20)})  # valid JSON, 4096 times the limit
    path = tmp_path / "huge.jsonl"
    path.write_text("\n".join([*rows[:3], huge, *rows[3:]]) + "\n")
    del huge

    result = run_cli("run", lm_recipe(data={"path": str(path)}))
    assert result.exit_code == 2
    assert (
        "Line 4 of huge.jsonl is malformed: longer than 4,096 bytes, the most read as one sample"
        in result.stderr
    )
    assert f"{path}:4" in result.stderr and 'on_error = "skip"' in result.stderr

    tracemalloc.start()
    records, skipped = jsonl.read_jsonl(path, skip_bad=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(skipped) == 1 and skipped[0].startswith("line 4: longer than 4,096 bytes")
    assert len(records) == 12 and records[3]["id"] == "huge.jsonl:5"  # the lines after it keep their numbers
    assert peak < 4 << 20, f"reading held {peak:,} bytes: the 16 MiB line was read whole"
    # A line of exactly the limit is read; its newline does not count.
    exact = json.dumps({"prompt": "q", "response": ""})
    exact = exact[:-2] + "x" * (4096 - len(exact)) + exact[-2:]
    (tmp_path / "exact.jsonl").write_text(exact + "\n" + exact)
    assert len(jsonl.read_jsonl(tmp_path / "exact.jsonl", skip_bad=False)[0]) == 2


def test_wrong_shape_line_says_which_keys_it_has(lm_recipe, jsonl_file) -> None:
    data = jsonl_file("shape.jsonl", [{"text": "hello"}])
    result = run_cli("run", lm_recipe(data={"path": str(data)}))
    assert result.exit_code == 2
    assert "neither prompt/response nor messages (keys: text)" in result.stderr


def test_skip_counts_malformed_lines(tmp_path: Path, lm_recipe, jsonl_file, chat_rows) -> None:
    rows = [json.dumps(r) for r in chat_rows(12)] + [
        "not json",
        '{"messages": [{"role": "user", "content": "x"}]}',
    ]
    data = jsonl_file("mixed.jsonl", rows)
    result = run_cli("run", lm_recipe(data={"path": str(data), "on_error": "skip"}, export=[]))
    assert result.exit_code == 0, result.output
    assert "skipped lines 2" in result.stdout
    status = json.loads((tmp_path / "runs" / "tiny" / "run.json").read_text())
    assert status["data"]["skipped lines"] == 2


def test_empty_dataset_is_an_error(lm_recipe, jsonl_file) -> None:
    data = jsonl_file("empty.jsonl", ["", "   "])
    result = run_cli("run", lm_recipe(data={"path": str(data)}))
    assert result.exit_code == 2
    assert "No training samples in" in result.stderr


def test_chat_messages_train(lm_recipe, jsonl_file) -> None:
    rows = [
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": f"hi {i}"},
                {"role": "assistant", "content": f"hello {i}"},
            ]
        }
        for i in range(10)
    ]
    data = jsonl_file("chat.jsonl", rows)
    result = run_cli("run", lm_recipe(data={"path": str(data)}, export=[]))
    assert result.exit_code == 0, result.output


def _encoder(max_length: int = 256, train_on_prompt: bool = False):
    import os

    from transformers import AutoTokenizer

    from loraplug_causal_lm.encode import Encoder
    from loraplug_causal_lm.presets import preset_dir

    tokenizer = AutoTokenizer.from_pretrained(preset_dir("tiny-llama", Path(os.environ["LORAPLUG_CACHE"])))
    return Encoder(tokenizer, max_length=max_length, train_on_prompt=train_on_prompt), tokenizer


def _targets(sample, tokenizer) -> str:
    return tokenizer.decode([label for label in sample.labels if label != -100])


def test_prompt_is_masked_and_the_response_with_its_end_token_is_learned() -> None:
    encoder, tokenizer = _encoder()
    record = {
        "id": "x",
        "messages": [
            {"role": "user", "content": "Forecast?"},
            {"role": "assistant", "content": "RAIN · 9°C"},
        ],
    }
    sample = encoder.encode(record)
    assert _targets(sample, tokenizer) == "RAIN · 9°C</s>"
    assert sample.input_ids[-1] == tokenizer.eos_token_id
    # labels are shifted: position t predicts token t+1
    for t, label in enumerate(sample.labels[:-1]):
        assert label in (-100, sample.input_ids[t + 1])

    everything = _encoder(train_on_prompt=True)[0].encode(record)
    assert _targets(everything, tokenizer).startswith("Forecast?")


def test_multi_turn_masks_every_user_turn() -> None:
    encoder, tokenizer = _encoder()
    record = {
        "id": "x",
        "messages": [
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "ONE"},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "TWO"},
        ],
    }
    assert _targets(encoder.encode(record), tokenizer) == "ONE</s><|assistant|>TWO</s>".replace(
        "<|assistant|>", ""
    )


def test_truncation_is_counted_and_samples_without_targets_are_dropped(
    tmp_path: Path, lm_recipe, jsonl_file
) -> None:
    rows = [{"prompt": "p" * 10, "response": "r" * (100 + i)} for i in range(8)] + [
        {"prompt": "x" * 300, "response": "y"}
    ]
    data = jsonl_file("long.jsonl", rows)
    result = run_cli(
        "run", lm_recipe(data={"path": str(data), "val_fraction": 0.0}, model={"max_length": 48}, export=[])
    )
    assert result.exit_code == 0, result.output
    assert "truncated 9" in result.stdout and "dropped (no target left) 1" in result.stdout
