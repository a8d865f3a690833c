"""run.json through RunStatus: an old file without a schema version still reads, odd values are named."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from loraplug import LoraplugError, RunStatus
from loraplug.status import SCHEMA_VERSION, UNVERSIONED
from loraplug.testing import run_cli

#: run.json as loraplug 0.1 wrote it before the schema version was recorded (keys and types as written).
UNVERSIONED_RUN = {
    "status": "finished",
    "recipe_hash": "3f2a9c",
    "started_at": "2026-11-01T10:00:00+0000",
    "loraplug_version": "0.1.0",
    "smoke": False,
    "processes": 1,
    "step": 4,
    "error": None,
    "pid": 1,
    "host": "elsewhere",
    "data": {"samples": 8, "validation samples": 2},
    "finished_at": "2026-11-01T10:05:00+0000",
    "train_loss": 2.5,
    "val_losses": [[0, 3.0], [4, 2.0]],
    "evaluations": [{"step": 0, "val_loss": 3.0}, {"step": 4, "val_loss": 2.0}],
    "best": {"metric": "val_loss", "value": 2.0, "step": 4},
    "stopped_early": False,
    "tokens_per_second": 812.4,
    "exports": [{"name": "peft", "kind": "peft", "ok": True, "error": None}],
}


def old_run(root: Path, name: str = "old", **changes: object) -> Path:
    """A finished run directory as an older loraplug left it: run.json without a version, a whole adapter."""
    run_dir = root / name
    (run_dir / "adapter").mkdir(parents=True)
    header = b"{}"  # a safetensors file holding no tensor is whole
    (run_dir / "adapter" / "adapter.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    (run_dir / "run.json").write_text(json.dumps({**UNVERSIONED_RUN, **changes}))
    return run_dir


def test_a_run_json_without_a_schema_version_reads_as_version_1(tmp_path: Path) -> None:
    run_dir = old_run(tmp_path)
    status = RunStatus.read(run_dir)
    assert status.schema_version == UNVERSIONED
    assert status.step == 4 and status.best == {"metric": "val_loss", "value": 2.0, "step": 4}
    assert status.evaluation_scores() == [(0, {"val_loss": 3.0}), (4, {"val_loss": 2.0})]

    listed = run_cli("runs", "list", tmp_path, "--json")
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.stdout)
    assert row["status"] == "finished" and row["step"] == 4 and row["problem"] is None
    assert row["best"] == {"metric": "val_loss", "value": 2.0, "step": 4}
    assert row["started_at"] == UNVERSIONED_RUN["started_at"]


def test_an_update_keeps_every_field_and_unknown_key_and_records_the_version(tmp_path: Path) -> None:
    run_dir = old_run(tmp_path, written_by_a_newer_loraplug={"kept": True})
    RunStatus.update(run_dir, step=5)
    written = json.loads((run_dir / "run.json").read_text())
    # None is "not recorded": no key is written for it (the old file's "error": null included).
    expected = {k: v for k, v in UNVERSIONED_RUN.items() if v is not None}
    assert written == {
        **expected,
        "step": 5,
        "schema_version": SCHEMA_VERSION,
        "written_by_a_newer_loraplug": {"kept": True},
    }
    with pytest.raises(TypeError):  # only the documented fields are ever written
        RunStatus.update(run_dir, stpe=6)


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("step", "4", "holds a string in 'step', where loraplug writes an integer"),
        ("smoke", 1, "holds a number in 'smoke', where loraplug writes true/false"),
        ("data", [1], "holds a list in 'data', where loraplug writes an object"),
    ],
)
def test_a_value_of_the_wrong_type_is_named_by_its_key(
    tmp_path: Path, key: str, value: object, said: str
) -> None:
    run_dir = old_run(tmp_path, "odd", **{key: value})
    with pytest.raises(LoraplugError) as raised:
        RunStatus.read(run_dir)
    assert said in raised.value.what and raised.value.where == str(run_dir / "run.json")
    assert RunStatus.load(run_dir) is None

    listed = run_cli("runs", "list", tmp_path, "--json")
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.stdout)
    assert row["status"] == "unreadable" and said in row["problem"]
