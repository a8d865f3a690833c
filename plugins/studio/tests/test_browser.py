"""The studio in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

Nothing is mocked: the studio serves on a free loopback port, the run is a real ``loraplug run`` process
training the tiny quickstart, and the caption edit lands in a copy of the tiny SD dataset. Each test
takes a screenshot of its page; with ``LORAPLUG_STUDIO_SCREENSHOTS=docs/images`` they are the README's.
Without Chromium or Playwright the tests are skipped, saying so (make install installs both).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import loraplug
from loraplug import PluginHost, RunStatus
from loraplug.testing import plugin_dist, plugins_installed
from loraplug_studio.jobs import process_alive
from loraplug_studio.server import create_app

from .conftest import REPO
from .test_api import fake_run

CHROMIUM = Path(os.environ.get("LORAPLUG_CHROMIUM", "/usr/bin/chromium"))

try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # pragma: no cover — the studio's test extra installs it
    sync_playwright = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(
    sync_playwright is None or not CHROMIUM.is_file(),
    reason=f"BROWSER TESTS SKIPPED: {'playwright is not installed' if sync_playwright is None else f'no Chromium at {CHROMIUM}'}"
    " — `make install` installs both (apt-get install chromium as root); set LORAPLUG_CHROMIUM to another binary",
)


def shoot(page: Page, tmp_path: Path, name: str) -> Path:
    """A screenshot of the page: into LORAPLUG_STUDIO_SCREENSHOTS (the README's images) when set."""
    folder = Path(os.environ.get("LORAPLUG_STUDIO_SCREENSHOTS") or tmp_path)
    if not folder.is_absolute():
        folder = REPO / folder
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"studio-{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


@contextmanager
def serving(root: Path, host: PluginHost | None = None) -> Iterator[str]:
    """The studio for ``root`` on a free loopback port, in a thread; yields its address."""
    import uvicorn

    app = create_app(root, host=host)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        # A run the test started must not outlive it (in real use it does: that is the point).
        for job in app.state.studio.jobs.all():
            if job.pid is not None and process_alive(job.pid):
                os.killpg(job.pid, signal.SIGKILL)


@pytest.fixture
def browser() -> Iterator[Any]:
    assert sync_playwright is not None  # noqa: S101 — skipped above otherwise
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    opened = context.new_page()
    opened.on("dialog", lambda dialog: dialog.accept())  # the confirms before an overwrite: yes
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    yield opened
    context.close()
    assert errors == [], f"the page's JavaScript failed: {errors}"


#: What makes the quickstart short enough for a test: one click in the form's overrides box.
FAST = "\n".join(
    [
        "train.log_every_n_steps=1",
        "train.batch_size=4",
        "train.warmup_steps=2",
        "eval.every_n_steps=8",
        "eval.generate_samples=2",
        "eval.metrics=[]",
    ]
)
STEPS = 16


@pytest.mark.slow
def test_fill_check_launch_watch_stop_resume_and_open_the_run(
    studio_root: Path, page: Page, tmp_path: Path
) -> None:
    with serving(studio_root) as url:
        page.goto(f"{url}/new?recipe=recipes/quickstart.toml")
        status = page.locator("#check-status")
        expect(status).to_have_text("recipe check: OK", timeout=60_000)
        page.fill("#f-train-max_steps", str(STEPS))  # the one option changed
        page.fill("#f-train-lr", "-1")  # a bad value: recipe check's message appears at the field
        expect(page.locator("label[data-name='train.lr'] .field-error")).to_contain_text(
            "Input should be greater than 0", timeout=30_000
        )
        expect(status).to_have_text("1 problem")
        page.locator("label[data-name='train.lr']").scroll_into_view_if_needed()
        shoot(page, tmp_path, "new-run")
        page.fill("#f-train-lr", "0.003")
        expect(status).to_have_text("recipe check: OK", timeout=30_000)
        page.fill("#overrides", FAST)
        expect(status).to_have_text("recipe check: OK", timeout=30_000)

        page.click("#launch-btn")
        page.wait_for_url("**/run?path=runs%2Fquickstart", timeout=60_000)
        step = page.locator("#run-step")
        expect(page.locator("#run-status")).to_have_text("running", timeout=180_000)
        page.wait_for_function(
            "Number(document.getElementById('run-step').textContent) >= 2", timeout=180_000
        )
        loss = page.locator(".chart-box[data-metric='train/loss'] svg")
        first = int(loss.get_attribute("data-points") or 0)
        page.wait_for_function(
            f"Number(document.querySelector(\".chart-box[data-metric='train/loss'] svg\")?.dataset.points) > {first}",
            timeout=120_000,
        )  # the loss chart grows as metrics.jsonl does
        shoot(page, tmp_path, "run-live")

        page.click("#stop-btn")  # SIGINT, as Ctrl-C: a checkpoint, then `interrupted`
        expect(page.locator("#run-status")).to_have_text("interrupted", timeout=120_000)
        stopped_at = int(step.inner_text())
        assert 0 < stopped_at < STEPS
        assert list((studio_root / "runs" / "quickstart" / "checkpoints").glob("step-*"))

        page.click("#resume-btn")
        expect(page.locator("#run-status")).to_have_text("finished", timeout=300_000)
        expect(step).to_have_text(str(STEPS))
        resumed = RunStatus.read(studio_root / "runs" / "quickstart").resumed_at_step
        assert resumed is not None and 0 < resumed <= stopped_at  # it continued from the stop's checkpoint
        assert "resum" in (page.locator("#log-tail").text_content() or "").lower()  # the process's own output

        # Runs: the finished run beside a second one, then both compared.
        resolved = tomllib.loads((studio_root / "runs" / "quickstart" / "recipe.toml").read_text())
        fake_run(studio_root, "quickstart-lr-1e-3", 0.001, [5.6, 5.1, 4.7, 4.3, 4.0, 3.8], recipe=resolved)
        page.goto(f"{url}/runs")
        row = page.locator("tr[data-run='runs/quickstart']")
        expect(row).to_contain_text("finished")
        expect(row).to_contain_text(f"{STEPS}/{STEPS}")
        shoot(page, tmp_path, "runs")
        page.check("input.pick[value='runs/quickstart']")
        page.check("input.pick[value='runs/quickstart-lr-1e-3']")
        page.click("#compare-btn")
        expect(page.locator("#recipe-diff")).to_contain_text("train.lr")
        expect(page.locator(".chart-box[data-metric='train/loss'] polyline")).to_have_count(2)
        shoot(page, tmp_path, "compare")

        page.goto(f"{url}/runs")
        page.click("tr[data-run='runs/quickstart'] td:nth-child(2) a")
        peft = page.locator("details.export", has_text="peft (peft)")
        expect(peft).to_contain_text("adapter_config.json")
        expect(peft).to_contain_text("PeftModel.from_pretrained")
        expect(page.locator("details.export", has_text="merged (merged)")).to_contain_text(
            "AutoModelForCausalLM"
        )
        expect(page.locator("code.sha").first).to_have_text(re.compile(r"^[0-9a-f]{64}$"))
        page.evaluate("document.querySelector('details.export').scrollIntoView()")
        shoot(page, tmp_path, "run")

        # Export again without retraining: a queued `loraplug export`, then the page shows the new manifest.
        manifest = studio_root / "runs" / "quickstart" / "exports" / "peft" / "export.json"
        before = manifest.stat().st_mtime_ns
        page.select_option("#export-kind", "peft")
        page.check("#export-overwrite")
        page.click("#export-btn")
        deadline = time.monotonic() + 180
        while not (manifest.exists() and manifest.stat().st_mtime_ns != before):
            assert time.monotonic() < deadline, page.locator("#export-status").text_content()
            time.sleep(0.5)
        expect(page.locator("details.export", has_text="peft (peft)")).to_contain_text(
            "adapter_config.json", timeout=60_000
        )


def test_edit_a_caption_and_see_the_file_change(studio_root: Path, page: Page, tmp_path: Path) -> None:
    caption = studio_root / "recipes" / "data" / "shapes" / "shape-000.txt"
    original = caption.read_text()
    with serving(studio_root) as url:
        page.goto(f"{url}/dataset?path=recipes/data/shapes")
        item = page.locator("figure.item[data-image='recipes/data/shapes/shape-000.png']")
        expect(item.locator("img")).to_be_visible()
        expect(page.locator("#tag-table")).to_be_visible()
        shoot(page, tmp_path, "dataset")
        item.locator("textarea").fill("a hand-edited caption, studio")
        item.locator(".save-caption").click()  # confirms the overwrite (the dialog is accepted)
        expect(item.locator(".saved")).to_have_text("saved")
        assert caption.read_text() == "a hand-edited caption, studio"
        page.click("#undo-btn")
        page.wait_for_load_state()
        expect(item.locator("textarea")).to_have_value(original)
        assert caption.read_text() == original


def test_a_third_party_plugins_kinds_are_in_the_form(studio_root: Path, page: Page, tmp_path: Path) -> None:
    site = plugin_dist(
        tmp_path / "site",
        distribution="loraplug-csv",
        module="loraplug_csv",
        package=REPO / "examples" / "loraplug-csv" / "loraplug_csv",
    )
    with plugins_installed(site), serving(studio_root, host=loraplug.load_plugins()) as url:
        page.goto(f"{url}/new")
        kind = page.locator("select[name='data.kind']")
        expect(kind.locator("option[value='csv']")).to_have_count(1)
        kind.select_option("csv")
        field = page.locator("label[data-name='data.prompt_column']")
        expect(field).to_contain_text("Column holding the prompt.")  # the plugin's own description
        expect(field.locator("input")).to_have_attribute("placeholder", "prompt")  # and default
        expect(page.locator("label[data-name='data.path'] .key")).to_have_text("path *")  # required
        # The path picker browses the studio's root on the server; a file becomes the path the recipe writes.
        path = page.locator("label[data-name='data.path']")
        path.locator("button.browse").click()
        for name in ("recipes/", "data/", "weather.jsonl"):
            path.locator(".picker a", has_text=name).first.click()
        expect(path.locator("input")).to_have_value("recipes/data/weather.jsonl")
        shoot(page, tmp_path, "plugin-kinds")
