"""`loraplug studio` itself, as a person starts it: the address it prints, the token it makes up."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def status_of(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 — a loopback URL we built
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_studio_beyond_loopback_prints_a_token_and_wants_it(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    studio = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loraplug",
            "studio",
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--root",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        assert studio.stdout is not None
        line = studio.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/\?token=(\S+)", line)
        assert found and int(found.group(1)) == port, line
        token = found.group(2)
        url = f"http://127.0.0.1:{port}/new"
        deadline = time.monotonic() + 60
        while True:
            try:
                first = status_of(url)
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline, "the studio did not start listening"
                time.sleep(0.2)
        assert first == 401
        assert status_of(url, {"X-Studio-Token": "not-it"}) == 401
        assert status_of(url, {"X-Studio-Token": token}) == 200
    finally:
        studio.send_signal(signal.SIGINT)  # Ctrl-C stops the studio (its runs would go on)
        assert studio.wait(60) == 0


def test_a_port_in_use_is_one_clear_error_before_the_address_is_printed(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "loraplug", "studio", "--port", str(port), "--root", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    assert result.returncode == 2, result.stderr
    assert f"The studio cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Choose another --port" in result.stderr
    assert "Traceback" not in result.stderr and "unexpected error" not in result.stderr
    assert "http://" not in result.stdout


def test_a_port_outside_the_tcp_range_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loraplug", "studio", "--port", "99999", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2, result.stderr
    assert "99999 is not in the range 1<=x<=65535" in result.stderr
    assert "Traceback" not in result.stderr and "unexpected error" not in result.stderr
