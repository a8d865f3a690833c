"""bench/gpu_check.py stays runnable without a GPU: its CPU dry run validates every recipe and override
the GPU parts use, runs the throughput setups and the packing comparison on a tiny model, and records
each CUDA part as skipped with the reason; a mismatch makes it exit non-zero and say what failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def dry_run(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-dry-run", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_cpu_dry_run_writes_the_summary_with_cuda_parts_skipped_and_a_reason(tmp_path: Path) -> None:
    proc = dry_run(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = {p["key"]: p for p in report["parts"]}
    assert set(parts) == {"a1", "a2", "a3", "b", "c", "d", "e", "f", "g", "h"}
    assert report["failed"] == [] and report["machine"]["mode"] == "cpu-dry-run"
    for part in parts.values():
        assert part["status"] == "skipped" and "CPU dry run" in part["reason"], part
        assert part["checks"] and all(c["ok"] for c in part["checks"]), part["checks"]
    # What the dry run really ran: the throughput setups on a tiny model, and the packing comparison.
    results = parts["c"]["figures"]["results"]
    assert set(results) == {"loraplug", "loraplug-padded", "hf"}
    assert all(r["steps"] == 4 and r["tokens_per_s"] > 0 for r in results.values())
    assert parts["c"]["figures"]["model"]["flops_per_token"] > 0
    assert parts["d"]["figures"]["float32"]["logits_max_abs_diff"] < 1e-4
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "| part | what | status | seconds | note |" in markdown and "## Throughput (part c)" in markdown
    assert "flash-attention 2" in markdown


def test_a_mismatch_fails_the_check_and_says_what_failed(tmp_path: Path) -> None:
    # Documents packed without their block-diagonal mask attend to each other: part d must catch it.
    proc = dry_run(tmp_path, "--only", "d", "--leak-packing")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert (
        "GPU check FAILED" in proc.stderr and "float32: packed logits equal the documents' own" in proc.stderr
    )
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [p["status"] for p in report["parts"]] == ["failed"]
    assert (
        "✘ FAILED float32: packed logits equal the documents' own" in (tmp_path / "gpu_check.md").read_text()
    )
