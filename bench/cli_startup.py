"""Wall time of `loraplug --help` and `loraplug plugins list` (target: under 0.5 s).

Each command runs in a fresh process, as a user types it; the median of N runs is reported.
Usage: python bench/cli_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = [["--help"], ["plugins", "list"], ["recipe", "check", "recipes/quickstart.toml"]]


def time_command(executable: str, args: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([executable, *args], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    executable = shutil.which("loraplug", path=str(Path(sys.executable).parent)) or "loraplug"
    print(f"python {platform.python_version()}, {platform.machine()}, {platform.node()}")
    print(f"{'command':40} {'median s':>9} {'min s':>7} {'max s':>7}")
    for command in COMMANDS:
        times = time_command(executable, command, args.runs)
        print(
            f"{'loraplug ' + ' '.join(command):40} {statistics.median(times):9.3f} {min(times):7.3f} {max(times):7.3f}"
        )


if __name__ == "__main__":
    main()
