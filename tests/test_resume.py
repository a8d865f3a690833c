"""Never lose a run: a run killed at any instant and resumed ends with the weights of an uninterrupted run.

Runs are killed with SIGKILL from inside (LORAPLUG_FAULT=kill:micro=N, see loraplug/training/faults.py)
so the kill point is exact: the middle of an accumulation cycle, between a backward pass and its
optimizer step, and after a checkpoint. Dropout is on, so the random generators must be restored too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loraplug.testing import run_cli

STEPS, SAVE_EVERY, ACCUMULATION = 8, 2, 2


@pytest.fixture
def resumable(toy_recipe_file):
    def make(name: str, **train):
        settings = {"max_steps": STEPS, "batch_size": 3, "grad_accum_steps": ACCUMULATION,
                    "save_every_n_steps": SAVE_EVERY, "lr": 5e-3, **train}  # fmt: skip
        return toy_recipe_file(
            run={"name": name},
            data={"val_path": None},
            adapter={"dropout": 0.1},
            train={k: v for k, v in settings.items() if v is not None},  # None: leave the key out
            eval={"sample_prompts": []},
            export=[],
        )

    return make


def cli(*args: str | Path, fault: str | None = None, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LORAPLUG_FAULT": fault or ""}
    return subprocess.run(
        [sys.executable, "-m", "loraplug", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter.safetensors"))


def test_killed_runs_resume_to_the_uninterrupted_weights(tmp_path: Path, resumable) -> None:
    reference = run_cli("run", resumable("reference"))
    assert reference.exit_code == 0, reference.output
    expected = adapter(tmp_path / "runs" / "reference")

    # micro-batch 5: the first half of step 3's accumulation; 10: after step 5's last backward, before
    # its optimizer step; 13: right after step 6's checkpoint, in step 7.
    for kill_at, resumes_from in ((5, 2), (10, 4), (13, 6)):
        name = f"killed-at-{kill_at}"
        recipe = resumable(name)
        killed = cli("run", recipe, fault=f"kill:micro={kill_at}", cwd=tmp_path)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        run_dir = tmp_path / "runs" / name
        assert (
            json.loads((run_dir / "run.json").read_text())["status"] == "running"
        )  # it could not say otherwise
        assert not (run_dir / "adapter").exists()

        resumed = run_cli("run", recipe, "--resume")
        assert resumed.exit_code == 0, resumed.output
        assert f"resuming from {run_dir / 'checkpoints' / f'step-{resumes_from:08d}'}" in resumed.stdout
        weights = adapter(run_dir)
        for key, value in expected.items():
            assert torch.equal(weights[key], value), f"{name}: {key} differs after resume"
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        steps = [m["step"] for m in metrics if m["split"] == "train"]
        assert steps == sorted(set(steps))  # no step logged twice


def test_resume_refuses_a_changed_recipe_unless_forced(tmp_path: Path, resumable) -> None:
    recipe = resumable("changed")
    assert cli("run", recipe, fault="kill:micro=9", cwd=tmp_path).returncode == -signal.SIGKILL
    refused = run_cli("run", recipe, "--resume", "train.lr=1e-3", "adapter.r=8")
    assert refused.exit_code == 2
    assert "The recipe changed since this run started: adapter.r, train.lr" in refused.stderr
    forced = run_cli("run", recipe, "--resume", "--force", "train.lr=1e-3", "adapter.r=4")
    assert forced.exit_code == 0, forced.output


def test_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, resumable) -> None:
    recipe = resumable("damaged")
    assert cli("run", recipe, fault="kill:micro=13", cwd=tmp_path).returncode == -signal.SIGKILL
    newest = tmp_path / "runs" / "damaged" / "checkpoints" / "step-00000006" / "adapter.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    resumed = run_cli("run", recipe, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "checkpoint step-00000006 is not usable (adapter.safetensors is damaged" in resumed.stdout
    assert "step-00000004" in resumed.stdout


def test_resume_with_every_checkpoint_damaged_names_them_and_suggests_no_setting_already_set(
    tmp_path: Path, resumable
) -> None:
    recipe = resumable("all-damaged")
    assert cli("run", recipe, fault="kill:micro=13", cwd=tmp_path).returncode == -signal.SIGKILL
    checkpoints = sorted((tmp_path / "runs" / "all-damaged" / "checkpoints").glob("step-*"))
    assert [p.name for p in checkpoints] == ["step-00000004", "step-00000006"]
    for checkpoint in checkpoints:
        (checkpoint / "adapter.safetensors").write_bytes(b"")
    result = run_cli("run", recipe, "--resume")
    assert result.exit_code == 2
    assert "has no whole checkpoint to resume from: all 2 of its checkpoints are damaged" in result.stderr
    assert "step-00000006: adapter.safetensors is damaged (its checksum does not match)" in result.stderr
    assert "save_every_n_steps" not in result.stderr  # it is set: the fault is elsewhere
    assert "Traceback" not in result.output


def test_a_resumed_runs_summary_and_run_json_start_at_the_step_0_baseline(
    tmp_path: Path, toy_recipe_file
) -> None:
    recipe = toy_recipe_file(
        run={"name": "evaluated"},
        train={"max_steps": 6, "save_every_n_steps": 2},
        eval={"every_n_steps": 2, "sample_prompts": []},
        export=[],
    )
    assert cli("run", recipe, fault="kill:micro=5", cwd=tmp_path).returncode == -signal.SIGKILL  # in step 5
    run_dir = tmp_path / "runs" / "evaluated"
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    baseline = next(r["val_loss"] for r in logged if r["split"] == "eval" and r["step"] == 0)

    resumed = run_cli("run", recipe, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert f"validation loss {baseline:.3f} → " in resumed.stdout
    status = json.loads((run_dir / "run.json").read_text())
    assert [e["step"] for e in status["evaluations"]] == [0, 2, 4, 6]
    assert status["val_losses"][0] == [0, baseline]


def test_resume_without_checkpoint_or_run_is_a_clear_error(tmp_path: Path, resumable) -> None:
    nothing = run_cli("run", resumable("never-ran"), "--resume")
    assert nothing.exit_code == 2 and "There is no run to resume" in nothing.stderr
    # The error says why there is none, and suggests setting save_every_n_steps only when it is not set.
    recipe = resumable("no-checkpoints-yet", save_every_n_steps=100)
    assert cli("run", recipe, fault="kill:micro=3", cwd=tmp_path).returncode == -signal.SIGKILL
    result = run_cli("run", recipe, "--resume")
    assert (
        result.exit_code == 2
        and "stopped before its first checkpoint (train.save_every_n_steps = 100" in result.stderr
    )
    assert "set train.save_every_n_steps" not in result.stderr.lower() and "--overwrite" in result.stderr
    recipe = resumable("no-checkpoints", save_every_n_steps=None)
    assert cli("run", recipe, fault="kill:micro=3", cwd=tmp_path).returncode == -signal.SIGKILL
    result = run_cli("run", recipe, "--resume")
    assert result.exit_code == 2 and "train.save_every_n_steps is not set, so it wrote none" in result.stderr
    done = run_cli("run", resumable("done"))
    assert done.exit_code == 0
    again = run_cli("run", resumable("done"), "--resume")
    assert again.exit_code == 2 and "already finished" in again.stderr


def test_a_finished_run_trained_further_replaces_its_own_exports_only(
    tmp_path: Path, toy_recipe_file
) -> None:
    # "To train further, raise train.max_steps and pass --resume --force": the exports are written again
    # from the new weights (they used to fail with "already exists"); files that are not an export stay.
    recipe = toy_recipe_file(train={"max_steps": 4, "save_every_n_steps": 2}, eval={"sample_prompts": []},
                             export=[{"kind": "toy-weights"}, {"kind": "toy-weights", "name": "mine"}])  # fmt: skip
    assert run_cli("run", recipe).exit_code == 0
    exports = tmp_path / "runs" / "tiny" / "exports"
    before = json.loads((exports / "toy-weights" / "export.json").read_text())["adapter"]
    (exports / "mine" / "export.json").unlink()  # "mine" is now the user's own folder, not an export
    (exports / "mine" / "notes.txt").write_text("keep me", encoding="utf-8")
    further = run_cli("run", recipe, "--resume", "--force", "train.max_steps=6")
    assert "resuming from" in further.stdout
    after = json.loads((exports / "toy-weights" / "export.json").read_text())["adapter"]
    assert after != before  # made from the weights trained further
    assert (exports / "mine" / "notes.txt").read_text() == "keep me"
    assert further.exit_code != 0 and "holds files that are not a loraplug export" in further.stderr


def test_full_disk_while_saving_keeps_the_last_whole_checkpoint(tmp_path: Path, resumable) -> None:
    recipe = resumable("full-disk")
    failed = cli("run", recipe, fault="enospc:checkpoint=2", cwd=tmp_path)
    assert failed.returncode == 2
    assert "Could not save the checkpoint at step 4: No space left on device" in failed.stderr
    assert "the last whole checkpoint (step-00000002) is kept" in failed.stderr
    checkpoints = tmp_path / "runs" / "full-disk" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000002"]
    assert json.loads((tmp_path / "runs" / "full-disk" / "run.json").read_text())["status"] == "failed"
    assert run_cli("run", recipe, "--resume").exit_code == 0


@pytest.mark.parametrize(
    ("stop", "save_every"),
    [(signal.SIGTERM, 1000), (signal.SIGINT, None)],  # SIGINT = Ctrl-C, with periodic checkpoints off
    ids=["SIGTERM", "SIGINT-no-periodic-checkpoints"],
)
def test_a_signal_saves_a_checkpoint_and_stops(
    tmp_path: Path, resumable, stop: signal.Signals, save_every: int | None
) -> None:
    recipe = resumable("signalled", max_steps=400, save_every_n_steps=save_every, log_every_n_steps=1)
    env = {**os.environ, "LORAPLUG_FAULT": ""}
    proc = subprocess.Popen([sys.executable, "-m", "loraplug", "run", str(recipe)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    metrics = tmp_path / "runs" / "signalled" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(stop)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert f"Stopped by {stop.name}" in stderr and "a checkpoint was saved" in stderr and "--resume" in stderr
    status = json.loads((tmp_path / "runs" / "signalled" / "run.json").read_text())
    assert status["status"] == "interrupted"
    saved = list((tmp_path / "runs" / "signalled" / "checkpoints").glob("step-*"))
    assert len(saved) == 1 and int(saved[0].name.removeprefix("step-")) == status["step"]


def test_resuming_drops_later_lines_and_a_line_torn_by_the_crash(tmp_path: Path) -> None:
    from loraplug.resume import truncate_metrics

    metrics = tmp_path / "metrics.jsonl"
    lines = [{"step": s, "split": "train", "loss": 1.0 / s} for s in (2, 4, 6)]
    metrics.write_text(
        "".join(json.dumps(r) + "\n" for r in lines) + '{"step": 8, "split": "tr'
    )  # killed mid-write
    truncate_metrics(metrics, 4)
    assert [json.loads(row) for row in metrics.read_text().splitlines()] == lines[:2]
