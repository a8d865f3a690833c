"""Data kind `hf-dataset`: local files and directories through Hugging Face datasets, column formats, the
early column check, streaming, offline hub ids — and the same rows as JSONL and as parquet giving the same
cleaning report, samples and training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loraplug import RunContext
from loraplug.testing import run_cli

ROOT = Path(__file__).resolve().parents[3]


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    """``rows`` as a parquet file; a key missing from a row is a null in its column."""
    names = list(dict.fromkeys(key for row in rows for key in row))
    pq.write_table(pa.table({name: [row.get(name) for row in rows] for name in names}), path)
    return path


def hf_data(path: Path, **options: Any) -> dict[str, Any]:
    return {"kind": "hf-dataset", "path": str(path), "val_fraction": 0.0, **options}


def rows_with_extras(chat_rows: Any) -> list[dict[str, Any]]:
    """Prompt/response rows with a system prompt on some, a label on all, a duplicate and an empty response
    (both removed by cleaning)."""
    rows = [{**r, "label": "rare" if i % 5 == 0 else "common"} for i, r in enumerate(chat_rows(14))]
    rows[2]["system"] = "Answer in one line."
    rows.append(dict(rows[3]))
    rows.append({"prompt": "q: nothing", "response": "  ", "label": "common"})
    return rows


#: Data file names of the same length, so the reports' tables are laid out alike.
JSONL, PARQUET = "rowsss.jsonl", "rows.parquet"


def inspect(recipe: Path, name: str) -> str:
    result = run_cli("data", "inspect", recipe, "-n", "40")
    assert result.exit_code == 0, result.output
    return result.stdout.replace(name, "DATA")


def test_the_same_rows_as_jsonl_and_parquet_inspect_identically(
    tmp_path: Path, lm_recipe: Any, jsonl_file: Any, chat_rows: Any
) -> None:
    rows = rows_with_extras(chat_rows)
    jsonl = jsonl_file(JSONL, rows)
    parquet = write_parquet(tmp_path / PARQUET, rows)  # no system: a null in the column
    model = {"max_length": 256}
    clean = {"clean": {"min_chars": 12}}
    from_jsonl = inspect(
        lm_recipe(data={"path": str(jsonl), "val_fraction": 0.0, **clean}, model=model), JSONL
    )
    from_parquet = inspect(lm_recipe(data=hf_data(parquet, **clean), model=model), PARQUET)
    assert from_parquet == from_jsonl
    # what was compared: cleaning removed the duplicate and the empty response, rows were packed,
    # and the system prompt of row 3 reached the tokens
    assert "exact_dedup" in from_parquet and "DATA:15" in from_parquet and "DATA:16" in from_parquet
    assert "samples in" in from_parquet and "<|system|>Answer in one line.</s>" in from_parquet


def test_a_balanced_run_trains_the_same_from_jsonl_and_parquet(
    tmp_path: Path, lm_recipe: Any, jsonl_file: Any, chat_rows: Any
) -> None:
    from safetensors.torch import load_file

    rows = rows_with_extras(chat_rows)
    jsonl = jsonl_file(JSONL, rows)
    parquet = write_parquet(tmp_path / PARQUET, rows)
    trained = {}
    for name, data in (
        ("jsonl", {"path": str(jsonl), "val_fraction": 0.0}),
        ("parquet", hf_data(parquet)),
    ):
        recipe = lm_recipe(
            run={"name": name},
            data={**data, "balance_by": "label"},
            model={"max_length": 256},
            train={"max_steps": 2, "batch_size": 4},
            eval={"sample_prompts": []},
            export=[],
        )
        result = run_cli("run", recipe)
        assert result.exit_code == 0, result.output
        assert "packing off: data.balance_by" in result.stdout
        run_dir = tmp_path / "runs" / name
        trained[name] = load_file(str(run_dir / "adapter" / "adapter.safetensors"))
        report = json.loads((run_dir / "data_report.json").read_text())
        assert report["sampling"]["classes"] == {"common": 11, "rare": 3}
    assert trained["jsonl"].keys() == trained["parquet"].keys()
    assert all(trained["jsonl"][k].equal(trained["parquet"][k]) for k in trained["jsonl"])


CONVERSATIONS = [
    [("system", "Be brief."), ("user", "Forecast for Oslo?"), ("assistant", "RAIN · 9°C")],
    [
        ("user", "Forecast for Rome?"),
        ("assistant", "SUN · 24°C"),
        ("user", "And Lima?"),
        ("assistant", "FOG"),
    ],
]
SHAREGPT_SPEAKERS = {"system": "system", "user": "human", "assistant": "gpt"}


def as_format(format: str) -> list[dict[str, Any]]:
    """CONVERSATIONS in ``format``'s columns (alpaca and prompt/response hold single turns: the first one's)."""
    if format == "messages":
        return [{"messages": [{"role": r, "content": c} for r, c in turns]} for turns in CONVERSATIONS]
    if format == "sharegpt":
        return [
            {"conversations": [{"from": SHAREGPT_SPEAKERS[r], "value": c} for r, c in turns]}
            for turns in CONVERSATIONS
        ]
    single = [dict(turns[:3]) if turns[0][0] == "system" else dict(turns[:2]) for turns in CONVERSATIONS]
    if format == "alpaca":
        return [
            {"instruction": t["user"], "input": "", "output": t["assistant"], "system": t.get("system")}
            for t in single
        ]
    return [{"prompt": t["user"], "response": t["assistant"], "system": t.get("system")} for t in single]


def as_jsonl(format: str) -> list[dict[str, Any]]:
    if format in ("messages", "sharegpt"):
        return as_format("messages")
    return [
        {k: v for k, v in {"system": r["system"], "prompt": r.get("prompt", r.get("instruction")), "response": r.get("response", r.get("output"))}.items() if v is not None}
        for r in as_format(format)
    ]  # fmt: skip


@pytest.mark.parametrize("format", ["messages", "sharegpt", "alpaca", "prompt-response"])
def test_each_chat_format_reads_as_jsonl_reads_the_same_conversation(
    tmp_path: Path, lm_recipe: Any, jsonl_file: Any, format: str
) -> None:
    parquet = write_parquet(tmp_path / PARQUET, as_format(format))
    jsonl = jsonl_file(JSONL, as_jsonl(format))
    model = {"max_length": 256}
    from_jsonl = inspect(lm_recipe(data={"path": str(jsonl), "val_fraction": 0.0}, model=model), JSONL)
    # `auto` finds the format from the columns
    from_parquet = inspect(lm_recipe(data=hf_data(parquet), model=model), PARQUET)
    assert from_parquet == from_jsonl
    assert "Forecast for Rome?" in from_parquet


def test_alpaca_input_follows_the_instruction_and_columns_map_other_names(
    tmp_path: Path, lm_recipe: Any
) -> None:
    rows = [{"question": "Translate:", "context": "hei", "answer": "hello", "source": "x"}]
    parquet = write_parquet(tmp_path / PARQUET, rows)
    columns = {"instruction": "question", "input": "context", "output": "answer"}
    recipe = lm_recipe(data=hf_data(parquet, format="alpaca", columns=columns), model={"max_length": 256})
    assert "<|user|>Translate:\nhei</s><|assistant|>⟦hello</s>⟧" in inspect(recipe, PARQUET)


def context(tmp_path: Path) -> RunContext:
    return RunContext(recipe=None, run_dir=tmp_path, cache_dir=tmp_path / "cache")  # type: ignore[arg-type]


def load(tmp_path: Path, **options: Any) -> Any:
    from loraplug_datasets.options import HfDatasetOptions
    from loraplug_datasets.read import load as load_records

    checked = HfDatasetOptions.model_validate(
        {"val_fraction": 0.0, **options}, context={"base_dir": tmp_path}
    )
    return load_records(checked, context(tmp_path))


def test_csv_json_arrow_and_saved_directories_read_the_same_records(tmp_path: Path) -> None:
    import datasets

    rows = as_format("prompt-response")
    expected = load(tmp_path, path=str(write_parquet(tmp_path / PARQUET, rows))).train
    dataset = datasets.Dataset.from_list(rows)
    dataset.to_csv(str(tmp_path / "rows.csv"), index=False)
    dataset.to_json(str(tmp_path / "rows.jsonl"))
    dataset.save_to_disk(str(tmp_path / "saved"))
    with (
        pa.OSFile(str(tmp_path / "rows.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, dataset.data.schema) as writer,
    ):
        writer.write_table(dataset.data.table)
    datasets.DatasetDict({"train": dataset, "test": dataset.select([0])}).save_to_disk(
        str(tmp_path / "splits")
    )
    (tmp_path / "files").mkdir()
    write_parquet(tmp_path / "files" / "train.parquet", rows)
    write_parquet(tmp_path / "files" / "test.parquet", rows[:1])

    def content(records: Any) -> list[Any]:
        return [{k: v for k, v in r.items() if k != "id"} for r in records]

    for path in ("rows.csv", "rows.jsonl", "rows.arrow", "saved"):
        assert content(load(tmp_path, path=path).train) == content(expected), path
    for path in ("splits", "files"):
        data = load(tmp_path, path=path, val_split="test")
        assert content(data.train) == content(expected) and content(data.val) == content(expected[:1]), path
    missing = run_cli_error(tmp_path, path="files", val_split="validation")
    assert "has no split 'validation'" in missing


def run_cli_error(tmp_path: Path, **options: Any) -> str:
    from loraplug import LoraplugError

    with pytest.raises(LoraplugError) as raised:
        load(tmp_path, **options)
    return str(raised.value)


def test_text_and_label_make_labelled_text_records_with_class_names(tmp_path: Path) -> None:
    import datasets

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    datasets.Dataset.from_dict({"text": ["bad", "good"], "label": [0, 1]}, features=features).save_to_disk(
        str(tmp_path / "reviews")
    )
    records = load(tmp_path, path="reviews").train
    assert [(r["text"], r["label"]) for r in records] == [("bad", "neg"), ("good", "pos")]


def test_labelled_text_is_refused_for_a_causal_lm_at_recipe_check(tmp_path: Path, lm_recipe: Any) -> None:
    parquet = write_parquet(tmp_path / "reviews.parquet", [{"text": "good", "label": "pos"}])
    result = run_cli("recipe", "check", lm_recipe(data=hf_data(parquet)))
    assert result.exit_code == 2
    assert "produces labelled-text records" in " ".join(result.stderr.split())


def test_recipe_check_names_the_columns_it_found(tmp_path: Path, lm_recipe: Any) -> None:
    parquet = write_parquet(tmp_path / "odd.parquet", [{"question": "a", "answer": "b"}])
    unknown = run_cli("recipe", "check", lm_recipe(data=hf_data(parquet)))
    assert unknown.exit_code == 2
    message = " ".join(unknown.stderr.split())
    assert "no format fits the columns of" in message and "(question, answer)" in message
    assert "alpaca (instruction, input, output)" in message
    missing = run_cli("recipe", "check", lm_recipe(data=hf_data(parquet, format="prompt-response")))
    assert missing.exit_code == 2
    assert (
        "has no column prompt, response that format 'prompt-response' reads; its columns: question, answer"
        in " ".join(missing.stderr.split())
    )
    mapped = lm_recipe(data=hf_data(parquet, columns={"prompt": "question", "response": "answer"}))
    assert run_cli("recipe", "check", mapped).exit_code == 0


def test_recipe_check_refuses_a_damaged_parquet_file_and_an_unknown_suffix(
    tmp_path: Path, lm_recipe: Any
) -> None:
    (tmp_path / "cut.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "notes.txt").write_text("prompt,response\n")
    damaged = run_cli("recipe", "check", lm_recipe(data=hf_data(tmp_path / "cut.parquet")))
    assert damaged.exit_code == 2 and "cut.parquet cannot be read as parquet" in damaged.stderr
    suffix = run_cli("recipe", "check", lm_recipe(data=hf_data(tmp_path / "notes.txt")))
    assert suffix.exit_code == 2 and "notes.txt is not a file datasets reads by its suffix" in suffix.stderr


def test_a_malformed_row_names_its_row_or_is_skipped_and_counted(tmp_path: Path, lm_recipe: Any) -> None:
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}] * 3
    rows += [{"messages": [{"role": "robot", "content": "beep"}]}]
    parquet = write_parquet(tmp_path / "chat.parquet", rows)
    stopped = run_cli(
        "run",
        lm_recipe(data=hf_data(parquet), train={"max_steps": 1}, eval={"sample_prompts": []}, export=[]),
    )
    assert stopped.exit_code == 2
    assert (
        "Row 4 of chat.parquet does not fit format 'messages'" in stopped.stderr
        and "'robot'" in stopped.stderr
    )
    assert "Traceback" not in stopped.output


def test_a_hub_id_offline_is_a_clear_error_naming_hf_hub_offline(lm_recipe: Any) -> None:
    recipe = lm_recipe(data={"kind": "hf-dataset", "hub": "no-such-org/no-such-set"})
    text = recipe.read_text(encoding="utf-8")
    recipe.write_text(
        "\n".join(line for line in text.splitlines() if not line.startswith("path =")), encoding="utf-8"
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "Cannot load the hub dataset 'no-such-org/no-such-set': HF_HUB_OFFLINE=1 is set" in message
    assert "Traceback" not in result.output


def test_streaming_needs_max_steps_and_trains_from_a_directory(
    tmp_path: Path, lm_recipe: Any, chat_rows: Any
) -> None:
    (tmp_path / "set").mkdir()
    rows = chat_rows(20)
    for row in rows[::3]:  # 7 rows without a response: skipped and counted as they are read
        row["response"] = None
    write_parquet(tmp_path / "set" / "train.parquet", rows)
    write_parquet(tmp_path / "set" / "test.parquet", chat_rows(4, seed=1))
    data = hf_data(tmp_path / "set", streaming=True, val_split="test", shuffle_buffer=8, on_error="skip")
    unbounded = lm_recipe(data=data, export=[])
    unbounded.write_text(
        unbounded.read_text(encoding="utf-8").replace("max_steps = 4\n", ""), encoding="utf-8"
    )
    check = run_cli("recipe", "check", unbounded)
    assert check.exit_code == 2 and "`train.max_steps` is missing" in check.stderr
    # two DataLoader workers: rows skipped in a worker process are counted in the run's summary
    result = run_cli("run", lm_recipe(data=data, train={"max_steps": 3, "num_workers": 2}, export=[]))
    assert result.exit_code == 0, result.output
    status = json.loads((tmp_path / "runs" / "tiny" / "run.json").read_text())
    assert status["status"] == "finished" and status["step"] == 3
    assert status["data"]["train samples"] == "streamed" and status["data"]["val samples"] == 4
    assert status["data"]["skipped train rows"] >= 1


@pytest.mark.slow  # reads, tokenizes and packs the recipe's 1,200 rows
def test_the_tiny_datasets_recipe_trains_from_its_parquet_file(tmp_path: Path) -> None:
    recipe = ROOT / "recipes" / "tiny_datasets.toml"
    result = run_cli(
        "run",
        recipe,
        "train.max_steps=2",
        "train.batch_size=4",
        "eval.metrics=[]",
        "eval.sample_prompts=[]",
        "data.val_fraction=0.01",
        f"run.output_dir={tmp_path / 'runs'}",
    )
    assert result.exit_code == 0, result.output
    status = json.loads((tmp_path / "runs" / "tiny_datasets" / "run.json").read_text())
    assert status["status"] == "finished" and status["step"] == 2
    assert "train samples 1188, val samples 12" in result.stdout


def test_text_label_rows_train_a_sequence_classifier(tmp_path: Path) -> None:
    from loraplug.testing import write_recipe

    rows = [{"text": f"invoice {i} charged twice", "label": "billing"} for i in range(6)]
    rows += [{"text": f"error 503 on server {i}", "label": "outage"} for i in range(6)]
    parquet = write_parquet(tmp_path / "tickets.parquet", rows)
    recipe = {
        "run": {"name": "classify", "output_dir": str(tmp_path / "runs")},
        "data": hf_data(parquet),
        "model": {
            "kind": "sequence-classifier",
            "pretrained": "tiny-llama-classifier",
            "labels": ["billing", "outage"],
            "max_length": 32,
        },
        "adapter": {"kind": "lora", "r": 4},
        "train": {"max_steps": 2, "batch_size": 4},
        "eval": {"sample_prompts": []},
    }
    result = run_cli("run", write_recipe(tmp_path / "classify.toml", recipe))
    assert result.exit_code == 0, result.output
    assert (
        json.loads((tmp_path / "runs" / "classify" / "run.json").read_text())["data"]["train samples"] == 12
    )
    chat = write_parquet(tmp_path / "chat.parquet", as_format("prompt-response"))
    refused = run_cli(
        "recipe", "check", write_recipe(tmp_path / "chat.toml", {**recipe, "data": hf_data(chat)})
    )
    assert refused.exit_code == 2 and "produces chat records" in " ".join(refused.stderr.split())
