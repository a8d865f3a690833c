"""The studio's API without a browser: who may call it, which paths it touches, forms ↔ TOML, captions."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from fastapi.testclient import TestClient

import loraplug
from loraplug import LoraplugError, RunStatus
from loraplug.testing import plugin_dist, plugins_installed, run_cli
from loraplug_studio.paths import OutsideRoot, confined
from loraplug_studio.server import create_app

from .conftest import ORIGIN, REPO, PageClient

QUICKSTART = "recipes/quickstart.toml"
SHAPES = "recipes/data/shapes"


# -- paths -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["../outside.txt", "recipes/../../outside.txt", "/etc/passwd", "~/x", "recipes/.hidden"]
)
def test_confined_refuses_paths_that_leave_the_root(studio_root: Path, text: str) -> None:
    with pytest.raises(OutsideRoot):
        confined(studio_root, text)


def test_confined_refuses_a_symlink_out_of_the_root(studio_root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.txt").write_text("hush")
    (studio_root / "recipes" / "link").symlink_to(secret)
    with pytest.raises(OutsideRoot, match="symbolic link"):
        confined(studio_root, "recipes/link/key.txt")
    assert confined(studio_root, "recipes/quickstart.toml") == (studio_root / QUICKSTART).resolve()


def test_endpoints_refuse_paths_outside_the_root(
    client: PageClient, studio_root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"not yours")
    (studio_root / "escape.png").symlink_to(outside)
    assert client.get("/files", params={"path": "../outside.png"}).status_code == 403
    assert client.get("/files", params={"path": str(outside)}).status_code == 403
    assert client.get("/files", params={"path": "escape.png"}).status_code == 403
    assert client.get("/api/recipe", params={"path": "../outside.png"}).status_code == 403
    refused = client.page_post("/api/caption", {"path": "escape.png", "text": "x", "confirm": True})
    assert refused.status_code == 403
    assert client.page_post("/api/save", {"path": "../evil.toml", "form": {}}).status_code == 403
    assert client.page_post("/api/tags", {"path": "/tmp", "op": "add", "tag": "x"}).status_code == 403
    assert outside.read_bytes() == b"not yours"
    assert not (tmp_path / "evil.toml").exists()


# -- who may call it -----------------------------------------------------------------------------------


def test_a_non_loopback_address_needs_a_token(studio_root: Path) -> None:
    with pytest.raises(LoraplugError, match="needs a token"):
        create_app(studio_root, bind="0.0.0.0")
    app = create_app(studio_root, bind="0.0.0.0", token="s3cret")
    with TestClient(app, follow_redirects=False) as client:
        assert client.get("/new").status_code == 401
        assert client.get("/files", params={"path": QUICKSTART}).status_code == 401  # files too
        assert client.get("/api/run/events", params={"path": "runs/x"}).status_code == 401
        assert client.get("/new", params={"token": "wrong"}).status_code == 401
        first = client.get("/new", params={"token": "s3cret"})
        assert first.status_code == 303 and first.headers["location"] == "/new"  # the token leaves the URL
        assert "httponly" in first.headers["set-cookie"].lower()
        assert client.get("/new").status_code == 200  # the cookie now carries it
    with TestClient(app) as client:
        assert client.get("/api/schema", headers={"X-Studio-Token": "s3cret"}).status_code == 200


def test_changes_need_the_page_header_and_the_same_origin(client: PageClient, studio_root: Path) -> None:
    body = {"path": "recipes/new.toml", "form": {"run": {"name": "x"}}}
    assert client.post("/api/save", json=body).status_code == 403  # no header
    assert (
        client.post("/api/save", json=body, headers={"X-Studio-CSRF": client.csrf}).status_code == 403
    )  # no Origin
    evil = {"X-Studio-CSRF": client.csrf, "Origin": "http://evil.example"}
    assert client.post("/api/save", json=body, headers=evil).status_code == 403
    wrong = {"X-Studio-CSRF": "guess", "Origin": ORIGIN}
    assert client.post("/api/save", json=body, headers=wrong).status_code == 403
    assert not (studio_root / "recipes" / "new.toml").exists()
    assert client.page_post("/api/save", body).status_code == 200
    assert (studio_root / "recipes" / "new.toml").is_file()


def test_a_loopback_studio_answers_only_to_loopback_host_names(client: PageClient) -> None:
    """DNS rebinding: a page on evil.example whose name resolves to 127.0.0.1 is refused."""
    assert client.get("/new", headers={"Host": "evil.example:28001"}).status_code == 421
    assert client.get("/new", headers={"Host": "127.0.0.1:28001"}).status_code == 200
    assert client.get("/new", headers={"Host": "localhost:28001"}).status_code == 200


# -- forms and recipes ---------------------------------------------------------------------------------------


def test_a_recipe_saved_from_its_form_loads_back_the_same(client: PageClient, studio_root: Path) -> None:
    opened = client.get("/api/recipe", params={"path": QUICKSTART}).json()
    assert opened["base"] == "recipes" and opened["form"]["train"]["lr"] == "0.003"
    saved = client.page_post("/api/save", {"path": "recipes/copy.toml", "form": opened["form"]})
    assert saved.status_code == 200, saved.text
    original = tomllib.loads((studio_root / QUICKSTART).read_text())
    assert tomllib.loads((studio_root / "recipes" / "copy.toml").read_text()) == original
    again = client.get("/api/recipe", params={"path": "recipes/copy.toml"}).json()
    assert again["form"] == opened["form"]


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "recipes").glob("*.toml")))
def test_every_shipped_recipe_survives_the_form_round_trip(
    client: PageClient, studio_root: Path, recipe: str
) -> None:
    """Form values → TOML → form values keeps every key and value of every recipe in recipes/."""
    shutil.copy(REPO / "recipes" / recipe, studio_root / "recipes" / recipe)
    opened = client.get("/api/recipe", params={"path": f"recipes/{recipe}"}).json()
    saved = client.page_post("/api/save", {"path": "recipes/round-trip.toml", "form": opened["form"]})
    assert saved.status_code == 200, saved.text
    original = tomllib.loads((REPO / "recipes" / recipe).read_text())
    assert tomllib.loads((studio_root / "recipes" / "round-trip.toml").read_text()) == original


def test_saving_over_a_file_needs_a_confirm(client: PageClient, studio_root: Path) -> None:
    before = (studio_root / QUICKSTART).read_text()
    form = {"run": {"name": "other"}}
    refused = client.page_post("/api/save", {"path": QUICKSTART, "form": form})
    assert refused.status_code == 409 and refused.json()["confirm"] is True
    assert (studio_root / QUICKSTART).read_text() == before
    assert (
        client.page_post("/api/save", {"path": QUICKSTART, "form": form, "confirm": True}).status_code == 200
    )
    assert tomllib.loads((studio_root / QUICKSTART).read_text()) == {"run": {"name": "other"}}
    assert client.page_post("/api/save", {"path": "recipes/x.txt", "form": form}).status_code == 400


def test_the_check_says_what_recipe_check_says(client: PageClient, studio_root: Path) -> None:
    form = client.get("/api/recipe", params={"path": QUICKSTART}).json()["form"]
    assert client.page_post(
        "/api/check", {"form": form, "base": "recipes", "name": "quickstart.toml"}
    ).json()["ok"]
    form["train"] |= {"lr": "-1", "shedule": '"cosine"'}
    checked = client.page_post(
        "/api/check", {"form": form, "base": "recipes", "name": "quickstart.toml"}
    ).json()
    assert checked["problems"] == [
        "`train.lr` = -1: Input should be greater than 0 (the form)",
        "unknown key `train.shedule` (the form); did you mean `train.schedule`?",
    ]
    cli = run_cli("recipe", "check", studio_root / QUICKSTART, "train.lr=-1", "train.shedule=cosine")
    assert "`train.lr` = -1: Input should be greater than 0" in cli.output
    assert "did you mean `train.schedule`?" in cli.output
    # Overrides and --smoke go through the same check.
    smoke = client.page_post(
        "/api/check",
        {
            "form": form | {"train": {"lr": "0.01"}},
            "base": "recipes",
            "overrides": "train.lr=0",
            "smoke": True,
        },
    ).json()
    assert any("train.lr" in p and "override" in p for p in smoke["problems"])


def test_a_third_party_plugins_kinds_appear_in_the_form(studio_root: Path, tmp_path: Path) -> None:
    site = plugin_dist(
        tmp_path / "site",
        distribution="loraplug-csv",
        module="loraplug_csv",
        package=REPO / "examples" / "loraplug-csv" / "loraplug_csv",
    )
    with plugins_installed(site):
        app = create_app(studio_root, host=loraplug.load_plugins())
        with TestClient(app, base_url=ORIGIN) as client:
            kinds = client.get("/api/schema").json()["kinds"]
    csv = {(k["stage"], k["name"]): k for k in kinds if k["distribution"] == "loraplug-csv"}
    assert {("data", "csv"), ("data", "csv-labels"), ("model", "text-classifier")} <= csv.keys()
    fields = {f["name"]: f for f in csv[("data", "csv")]["fields"]}
    assert fields["path"]["widget"] == "path" and fields["path"]["required"]


# -- runs ------------------------------------------------------------------------------------------------


def fake_run(
    root: Path, name: str, lr: float, losses: list[float], recipe: dict[str, Any] | None = None
) -> Path:
    """An interrupted run's directory written as a run writes it (run.json, metrics.jsonl, recipe.toml);
    ``recipe``: the resolved recipe to start from (its run.name and train.lr are set)."""
    run_dir = root / "runs" / name
    run_dir.mkdir(parents=True)
    RunStatus(
        status="interrupted",
        step=len(losses),
        started_at="2026-11-29T10:00:00+00:00",
        finished_at="2026-11-29T10:01:30+00:00",
    ).save(run_dir)
    lines = [json.dumps({"step": i + 1, "split": "train", "loss": loss}) for i, loss in enumerate(losses)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    table = recipe or {"train": {"max_steps": 10}}
    table = {
        **table,
        "run": {**table.get("run", {}), "name": name},
        "train": {**table.get("train", {}), "lr": lr},
    }
    (run_dir / "recipe.toml").write_text(tomli_w.dumps(table))
    return run_dir


def test_runs_are_listed_and_compared(client: PageClient, studio_root: Path) -> None:
    fake_run(studio_root, "first", 0.001, [3.0, 2.0, 1.5])
    fake_run(studio_root, "second", 0.003, [3.0, 1.0])
    listing = client.get("/runs").text
    assert "runs/first" in listing and "runs/second" in listing and "interrupted" in listing
    assert "90 s" in listing
    compared = client.get("/compare", params=[("path", "runs/first"), ("path", "runs/second")])
    assert compared.status_code == 200
    assert "<code>train.lr</code>" in compared.text and "<code>run.name</code>" in compared.text
    assert "<code>train.max_steps</code>" not in compared.text  # equal: not a difference
    view = client.get("/api/run", params={"path": "runs/second"}).json()
    assert view["series"]["train/loss"] == [[1, 3.0], [2, 1.0]] and view["total_steps"] == 10


def test_stop_refuses_a_run_that_is_not_running(client: PageClient, studio_root: Path) -> None:
    fake_run(studio_root, "done", 0.001, [1.0])
    refused = client.page_post("/api/stop", {"path": "runs/done"})
    assert refused.status_code == 400 and "not running" in refused.json()["error"]


# -- dataset -----------------------------------------------------------------------------------------------


def test_a_caption_edit_needs_a_confirm_and_can_be_undone(client: PageClient, studio_root: Path) -> None:
    caption = studio_root / SHAPES / "shape-000.txt"
    before = caption.read_text()
    body = {"path": f"{SHAPES}/shape-000.png", "text": "a red circle, studio"}
    assert client.page_post("/api/caption", body).status_code == 409
    assert caption.read_text() == before
    assert client.page_post("/api/caption", body | {"confirm": True}).json()["written"] is True
    assert caption.read_text() == "a red circle, studio"
    assert client.page_post("/api/undo", {}).json()["restored"] == [f"{SHAPES}/shape-000.txt"]
    assert caption.read_text() == before
    assert client.page_post("/api/undo", {}).status_code == 400  # nothing left to undo


def test_bulk_tags_ask_first_then_change_every_caption_and_undo_as_one(
    client: PageClient, studio_root: Path
) -> None:
    folder = studio_root / SHAPES
    before = {p.name: p.read_text() for p in folder.glob("*.txt")}
    asked = client.page_post("/api/tags", {"path": SHAPES, "op": "add", "tag": "studio-tag"}).json()
    assert asked == {"would_change": len(before), "confirm": True}
    assert {p.name: p.read_text() for p in folder.glob("*.txt")} == before
    done = client.page_post(
        "/api/tags", {"path": SHAPES, "op": "add", "tag": "studio-tag", "confirm": True}
    ).json()
    assert done["changed"] == len(before)
    assert all(p.read_text().endswith(", studio-tag") for p in folder.glob("*.txt"))
    page = client.get("/dataset", params={"path": SHAPES}).text
    assert f">studio-tag</a></td><td>{len(before)}<" in page  # the tag frequency table
    client.page_post("/api/undo", {})
    assert {p.name: p.read_text() for p in folder.glob("*.txt")} == before


def test_the_studio_command_is_registered() -> None:
    result = run_cli("studio", "--help")
    assert result.exit_code == 0 and "--host" in result.output and "--token" in result.output


def test_the_jsonl_preview_names_bad_lines(client: PageClient, studio_root: Path) -> None:
    path = studio_root / "recipes" / "data" / "weather.jsonl"
    path.write_bytes(path.read_bytes() + b"not json\n\xff\xfe\n")
    page = client.get("/dataset", params={"path": "recipes/data/weather.jsonl"}).text
    assert "not JSON" in page and "not UTF-8 text" in page and "records" in page


# -- auto-captioning ---------------------------------------------------------------------------------------

#: A caption kind as a third party would publish it: names every image by its width.
TEST_CAPTIONER = """
import loraplug
from loraplug import KindSpec, Options


class WidthOptions(Options):
    word: str = "shape"


class WidthCaptioner:
    def __init__(self, word):
        self.word = word

    def caption(self, images):
        return [[self.word, f"{image.width}px"] for image in images]


@loraplug.hookimpl
def loraplug_register_kinds(register):
    register(KindSpec("caption", "width", "studio_test_captioner:WidthOptions", "names each image by its width"))


@loraplug.hookimpl
def loraplug_build_captioner(kind, options, ctx):
    return WidthCaptioner(options.word)
"""


def test_auto_caption_a_folder_with_an_installed_caption_kind_and_undo_it(
    studio_root: Path, tmp_path: Path
) -> None:
    import time

    folder = studio_root / SHAPES
    (folder / "shape-001.txt").unlink()  # one image without a caption: the only one written
    before = {p.name: p.read_text() for p in folder.glob("*.txt")}
    site = plugin_dist(
        tmp_path / "site",
        distribution="studio-test-captioner",
        module="studio_test_captioner",
        source=TEST_CAPTIONER,
    )
    with plugins_installed(site):
        app = create_app(studio_root, host=loraplug.load_plugins())
        with PageClient(app, base_url=ORIGIN) as client:
            client.csrf = app.state.guard.csrf
            kinds = client.get("/api/caption-kinds").json()["kinds"]
            assert [
                (k["name"], [f["name"] for f in k["fields"]])
                for k in kinds
                if k["distribution"] == "studio-test-captioner"
            ] == [("width", ["word"])]
            bad = client.page_post("/api/autocaption", {"path": SHAPES, "kind": "nope"})
            assert bad.status_code == 400 and "width" in bad.json()["fix"]
            asked = client.page_post("/api/autocaption", {"path": SHAPES, "kind": "width", "overwrite": True})
            assert asked.status_code == 409  # replacing captions asks first
            started = client.page_post(
                "/api/autocaption",
                {"path": SHAPES, "kind": "width", "options": {"word": "blob"}, "prefix": "sks"},
            )
            assert started.status_code == 200, started.text
            deadline = time.monotonic() + 60
            while (progress := client.get("/api/autocaption").json())[
                "state"
            ] == "running" and time.monotonic() < deadline:
                time.sleep(0.2)
            assert progress["state"] == "finished", progress
            assert progress["written"] == 1 and progress["kept"] == len(before)
            written = (folder / "shape-001.txt").read_text()
            assert written == "sks, blob, 64px\n"
            assert {
                p.name: p.read_text() for p in folder.glob("*.txt") if p.name != "shape-001.txt"
            } == before
            client.page_post("/api/undo", {})
            assert not (folder / "shape-001.txt").exists()


def test_an_override_cannot_smuggle_an_option_of_loraplug_run(client: PageClient) -> None:
    form = client.get("/api/recipe", params={"path": QUICKSTART}).json()["form"]
    body = {
        "form": form,
        "base": "recipes",
        "name": "quickstart.toml",
        "overrides": "train.lr=1e-4\n--overwrite",
    }
    checked = client.page_post("/api/check", body).json()
    assert checked["problems"] == ["override '--overwrite' is not KEY=VALUE"]
    assert client.page_post("/api/launch", body).status_code == 400


def test_files_are_served_sandboxed(client: PageClient, studio_root: Path) -> None:
    """A run's report.html (or any file) is shown, but its scripts never run with the studio's origin."""
    (studio_root / "runs").mkdir()
    (studio_root / "runs" / "report.html").write_text("<script>fetch('/api/undo', {method: 'POST'})</script>")
    served = client.get("/files", params={"path": "runs/report.html"})
    assert served.headers["content-security-policy"] == "sandbox"
    assert served.headers["x-content-type-options"] == "nosniff"


def test_launching_over_an_earlier_run_says_how_to_go_on(client: PageClient, studio_root: Path) -> None:
    fake_run(studio_root, "quickstart", 0.003, [1.0])
    form = client.get("/api/recipe", params={"path": QUICKSTART}).json()["form"]
    body = {"form": form, "base": "recipes", "name": "quickstart.toml"}
    refused = client.page_post("/api/launch", body)
    assert refused.status_code == 400
    assert refused.json()["problems"] == [
        "runs/quickstart already holds a run: give run.name another name, or tick --overwrite to replace it"
    ]
    assert client.get("/api/jobs").json()["jobs"] == []  # nothing queued


def test_the_path_picker_lists_folders_inside_the_root_only(client: PageClient, studio_root: Path) -> None:
    top = client.get("/api/browse").json()
    assert top["path"] == "" and top["parent"] is None
    assert {"name": "recipes", "dir": True, "path": "recipes"} in top["entries"]
    assert not any(e["name"].startswith(".") for e in top["entries"])
    data = client.get("/api/browse", params={"path": "recipes/data"}).json()
    assert data["parent"] == "recipes"
    assert {"name": "weather.jsonl", "dir": False, "path": "recipes/data/weather.jsonl"} in data["entries"]
    assert client.get("/api/browse", params={"path": ".."}).status_code == 403
    assert client.get("/api/browse", params={"path": "/etc"}).status_code == 403


def test_export_another_kind_is_a_queued_loraplug_export(client: PageClient, studio_root: Path) -> None:
    import numpy
    from safetensors.numpy import save_file

    run = fake_run(
        studio_root,
        "done",
        0.001,
        [1.0],
        recipe={"model": {"kind": "causal-lm"}, "adapter": {"kind": "lora"}},
    )
    assert (
        client.page_post("/api/export", {"path": "runs/done", "kind": "peft"}).status_code == 400
    )  # not finished
    RunStatus(status="finished", step=1).save(run)
    (run / "adapter").mkdir()
    save_file(
        {"lora_A": numpy.zeros((2, 2), dtype=numpy.float32)}, str(run / "adapter" / "adapter.safetensors")
    )
    refused = client.page_post("/api/export", {"path": "runs/done", "kind": "kohya"})  # a diffusion export
    assert refused.status_code == 400 and "peft" in refused.json()["fix"]
    queued = client.page_post("/api/export", {"path": "runs/done", "kind": "merged", "overwrite": True})
    assert queued.status_code == 200, queued.text
    job = next(j for j in client.get("/api/jobs").json()["jobs"] if j["id"] == queued.json()["job"])
    assert job["export_kind"] == "merged" and job["recipe"] == str(run.resolve())
    page = client.get("/run", params={"path": "runs/done"}).text
    assert '<option value="peft">' in page and '<option value="kohya">' not in page
