"""Several processes with no code change: `torchrun -m loraplug run` on CPU with gloo (on the toy
regressor: the core alone; the causal LM's two-process run is plugins/causal-lm/tests/test_distributed.py).

Two processes with micro-batch 2 see exactly the samples one process with micro-batch 4 sees (each
global micro-batch is cut into one slice per process) and the loss is normalised by the target count
of the whole step across processes, so the adapters agree to float rounding (measured: ~3e-8).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loraplug.testing import accelerate_launch, assert_same_tensors, free_port, run_cli, torchrun

pytestmark = pytest.mark.usefixtures("toy")  # installed for torchrun's processes too (PYTHONPATH)

TOLERANCE = 1e-6


def same_adapters(reference: Path, other: Path) -> dict[str, torch.Tensor]:
    """The two runs' adapters hold the same tensors, within TOLERANCE; returns the reference's."""
    a, b = (load_file(str(run / "adapter" / "adapter.safetensors")) for run in (reference, other))
    assert_same_tensors(a, b, TOLERANCE)
    return a


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path: Path, toy_recipe_file) -> None:
    recipe = toy_recipe_file(
        adapter={"dropout": 0.0},
        train={"max_steps": 3, "batch_size": 2, "grad_accum_steps": 2, "lr": 1e-2},
        eval={"sample_prompts": [], "every_n_steps": 2},
        export=[{"kind": "toy-weights"}],
    )
    two = torchrun(recipe, "run.name=two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_cli("run", recipe, "run.name=one", "train.batch_size=4")
    assert one.exit_code == 0, one.output

    runs = tmp_path / "runs"
    a = same_adapters(runs / "one", runs / "two")
    assert any(float(v.abs().max()) > 1e-3 for k, v in a.items() if "lora_B" in k)

    # only rank 0 writes: one metrics line per logged step, one header, one summary
    status = json.loads((runs / "two" / "run.json").read_text())
    assert status["processes"] == 2 and status["status"] == "finished"
    train_steps = [
        json.loads(row)["step"]
        for row in (runs / "two" / "metrics.jsonl").read_text().splitlines()
        if '"train"' in row
    ]
    assert train_steps == sorted(set(train_steps))
    assert two.stdout.count("loraplug run two") == 1 and two.stdout.count("done 3 steps") == 1
    one_val = [e["val_loss"] for e in json.loads((runs / "one" / "run.json").read_text())["evaluations"]]
    two_val = [e["val_loss"] for e in status["evaluations"]]
    assert (
        one_val == torch.tensor(two_val).tolist()
        or max(abs(x - y) for x, y in zip(one_val, two_val, strict=True)) < 1e-5
    )


def test_a_failing_process_stops_all_with_its_error_shown(tmp_path: Path, toy_recipe_file) -> None:
    recipe = toy_recipe_file(train={"max_steps": 50, "batch_size": 2}, eval={"sample_prompts": []}, export=[])
    started = time.monotonic()
    result = torchrun(recipe, cwd=tmp_path, fault="raise:step=2:rank=1")
    assert result.returncode != 0
    assert "injected failure after step 2 on process 1" in result.stderr
    assert time.monotonic() - started < 300
    assert json.loads((tmp_path / "runs" / "tiny" / "run.json").read_text())["status"] != "finished"


def test_the_other_processes_say_they_stopped_because_one_did(tmp_path: Path, toy_recipe_file) -> None:
    # Process 0 refuses to replace a finished run; process 1, waiting for it in a collective, finds the
    # connection closed. It must say that another process stopped first, not report a bug in loraplug.
    recipe = toy_recipe_file(train={"max_steps": 1}, eval={"sample_prompts": []}, export=[])
    assert run_cli("run", recipe).exit_code == 0
    again = torchrun(recipe, cwd=tmp_path)
    assert again.returncode != 0
    assert "already holds a finished run" in again.stderr
    assert "unexpected error" not in again.stderr, again.stderr[-3000:]


def test_a_killed_process_leaves_the_last_whole_checkpoint_and_the_run_resumes(
    tmp_path: Path, toy_recipe_file
) -> None:
    # Rank 1 is SIGKILLed in its 7th micro-batch (step 7, after the step-6 checkpoint): a lost node,
    # the OOM killer. The other process must stop, and the run must resume from step 6 to the end.
    recipe = toy_recipe_file(
        train={"max_steps": 10, "batch_size": 2, "save_every_n_steps": 2},
        eval={"sample_prompts": []},
        export=[],
    )
    started = time.monotonic()
    killed = torchrun(recipe, cwd=tmp_path, fault="kill:micro=7:rank=1")
    assert killed.returncode != 0, killed.stderr[-3000:]
    assert time.monotonic() - started < 300
    run_dir = tmp_path / "runs" / "tiny"
    assert json.loads((run_dir / "run.json").read_text())["status"] != "finished"
    saved = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    assert saved and saved[-1] == "step-00000006", saved

    resumed = torchrun(recipe, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "step-00000006" in resumed.stdout
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "finished" and status["step"] == 10 and status["resumed_at_step"] == 6


def test_a_run_killed_on_two_processes_resumes_on_one_with_the_same_global_batch(
    tmp_path: Path, toy_recipe_file
) -> None:
    # A lost node: the run continues on the processes left. With train.batch_size doubled each global
    # micro-batch keeps its samples, so the run ends where the uninterrupted one ends (no dropout here:
    # only the random generators cannot carry over).
    recipe = toy_recipe_file(
        adapter={"dropout": 0.0},
        train={"max_steps": 6, "batch_size": 2, "save_every_n_steps": 2, "lr": 1e-2},
        eval={"sample_prompts": []},
        export=[],
    )
    whole = torchrun(recipe, "run.name=whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = torchrun(recipe, "run.name=cut", cwd=tmp_path, fault="kill:micro=5:rank=1")
    assert killed.returncode != 0
    refused = run_cli("run", recipe, "run.name=cut", "--resume")  # 1 process × 2 samples ≠ 2 × 2
    assert refused.exit_code != 0
    assert "Resume on 1 process(es) with train.batch_size = 4" in refused.output
    resumed = run_cli("run", recipe, "run.name=cut", "--resume", "train.batch_size=4")
    assert resumed.exit_code == 0, resumed.output
    assert "on 1 process(es) instead of 2, train.batch_size 4" in resumed.output
    runs = tmp_path / "runs"
    same_adapters(runs / "whole", runs / "cut")
    assert json.loads((runs / "cut" / "run.json").read_text())["resumed_at_step"] == 4


def test_accelerate_launch_runs_the_same_two_processes(tmp_path: Path, toy_recipe_file) -> None:
    # `accelerate launch` with a plain multi-process config (what `accelerate config` writes for one
    # machine): on CPUs accelerate starts the processes with torchrun's launcher and loraplug's
    # Accelerator picks gloo, so the run equals torchrun's and one process with the same global batch.
    config = tmp_path / "ddp.yaml"
    config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_machines: 1\n"
        "num_processes: 2\nmachine_rank: 0\nmixed_precision: 'no'\n",
        encoding="utf-8",
    )
    recipe = toy_recipe_file(
        adapter={"dropout": 0.0},
        train={"max_steps": 3, "batch_size": 2, "lr": 1e-2},
        eval={"sample_prompts": []},
        export=[],
    )
    two = accelerate_launch(recipe, "run.name=two", config=config, cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_cli("run", recipe, "run.name=one", "train.batch_size=4")
    assert one.exit_code == 0, one.output
    runs = tmp_path / "runs"
    assert json.loads((runs / "two" / "run.json").read_text())["processes"] == 2
    same_adapters(runs / "one", runs / "two")


def test_two_machines_meet_through_accelerate_launch(tmp_path: Path, toy_recipe_file) -> None:
    # docs/distributed.md's two-node recipe, with both "machines" on this one: one `accelerate launch`
    # per machine_rank, one process each, meeting at main_process_ip:port (static rendezvous, gloo).
    from concurrent.futures import ThreadPoolExecutor

    recipe = toy_recipe_file(
        adapter={"dropout": 0.0},
        train={"max_steps": 3, "batch_size": 2, "lr": 1e-2},
        eval={"sample_prompts": []},
        export=[],
    )
    port = free_port()
    configs = []
    for rank in (0, 1):
        config = tmp_path / f"node{rank}.yaml"
        config.write_text(
            "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_machines: 2\n"
            f"num_processes: 2\nmachine_rank: {rank}\nmain_process_ip: 127.0.0.1\n"
            "rdzv_backend: static\nsame_network: true\nmixed_precision: 'no'\n",
            encoding="utf-8",
        )
        configs.append(config)
    with ThreadPoolExecutor(2) as pool:
        nodes = list(
            pool.map(
                lambda config: accelerate_launch(
                    recipe, "run.name=nodes", config=config, cwd=tmp_path, port=port
                ),
                configs,
            )
        )
    for node in nodes:
        assert node.returncode == 0, node.stderr[-3000:]
    one = run_cli("run", recipe, "run.name=one", "train.batch_size=4")
    assert one.exit_code == 0, one.output
    runs = tmp_path / "runs"
    assert json.loads((runs / "nodes" / "run.json").read_text())["processes"] == 2
    same_adapters(runs / "one", runs / "nodes")
