"""Fixtures shared by the core's tests and the first-party plugins' tests (the core's own: tests/conftest.py).

The causal-LM fixtures import its plugin only when a test asks for them: the core's tests run on the toy
regressor of ``loraplug.testing`` and need no model plugin."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

ROOT = Path(__file__).parent


@pytest.fixture(autouse=True, scope="session")
def _shared_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # One preset cache per test session (each xdist worker builds tiny-llama once).
    os.environ["LORAPLUG_CACHE"] = str(tmp_path_factory.mktemp("loraplug-cache"))


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs write runs/ under the current directory: keep every test's in its own tmp_path.
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def lm_recipe(tmp_path: Path) -> Any:
    """Factory: ``lm_recipe(train={"max_steps": 2})`` writes a tiny-llama recipe and returns its path."""
    from loraplug_causal_lm.testing import tiny_lm_recipe

    return lambda **changes: tiny_lm_recipe(tmp_path, **changes)


@pytest.fixture
def jsonl_file(tmp_path: Path) -> Any:
    """Factory: ``jsonl_file("name.jsonl", rows)`` writes JSON lines (strings are written verbatim)."""

    def write(name: str, rows: list[Any]) -> Path:
        path = tmp_path / name
        path.write_text(
            "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
        )
        return path

    return write


@pytest.fixture
def chat_rows() -> Any:
    """``chat_rows(count, seed=0)``: prompt/response pairs of different lengths."""
    from loraplug_causal_lm.testing import chat_lines

    return chat_lines
