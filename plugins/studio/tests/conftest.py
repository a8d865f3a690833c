"""The studio's test fixtures: a root holding copies of the quickstart recipe, its data and the tiny SD
image folder (tests edit copies, never recipes/), and a client that sends what the studio's page sends."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from loraplug_studio.server import create_app

REPO = Path(__file__).parents[3]
#: Where the test client's requests go: a loopback address, as a browser's would.
ORIGIN = "http://127.0.0.1"
RECIPES = REPO / "recipes"


@pytest.fixture
def studio_root(tmp_path: Path) -> Path:
    root = tmp_path / "studio"
    (root / "recipes" / "data").mkdir(parents=True)
    shutil.copy(RECIPES / "quickstart.toml", root / "recipes")
    shutil.copy(RECIPES / "data" / "weather.jsonl", root / "recipes" / "data")
    shutil.copytree(RECIPES / "data" / "shapes", root / "recipes" / "data" / "shapes")
    return root


class PageClient(TestClient):
    """A TestClient whose POSTs carry the page's CSRF header and the studio's own Origin."""

    csrf = ""

    def page_post(self, url: str, body: object) -> object:
        return self.post(url, json=body, headers={"X-Studio-CSRF": self.csrf, "Origin": ORIGIN})


@pytest.fixture
def client(studio_root: Path) -> Iterator[PageClient]:
    app = create_app(studio_root)
    with PageClient(app, base_url=ORIGIN) as test_client:
        test_client.csrf = app.state.guard.csrf
        yield test_client
