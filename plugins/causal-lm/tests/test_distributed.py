"""Two processes on the causal LM with `torchrun -m loraplug run` (CPU, gloo): both ranks build the
tiny-llama preset at once into a fresh cache, and a killed rank stops the run at its last whole
checkpoint, from which it resumes. (The core's side, on the toy regressor: tests/test_distributed.py.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from loraplug.testing import torchrun


def test_a_killed_process_leaves_the_last_whole_checkpoint_and_the_run_resumes(
    tmp_path: Path, lm_recipe
) -> None:
    # Rank 1 is SIGKILLed in its 7th micro-batch (step 7, after the step-6 checkpoint): a lost node,
    # the OOM killer. The other process must stop, and the run must resume from step 6 to the end.
    recipe = lm_recipe(
        train={"max_steps": 10, "batch_size": 2, "save_every_n_steps": 2},
        eval={"sample_prompts": []},
        export=[],
    )
    started = time.monotonic()
    # A fresh cache: both ranks build the tiny-llama preset at once. (transformers' save_pretrained
    # writes nothing on rank 1 of an initialised process group; a preset built there had no weights.)
    killed = torchrun(
        recipe,
        cwd=tmp_path,
        fault="kill:micro=7:rank=1",
        env={"LORAPLUG_CACHE": str(tmp_path / "fresh-cache")},
    )
    assert "Could not load the model" not in killed.stderr, killed.stderr[-3000:]
    assert killed.returncode != 0
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
