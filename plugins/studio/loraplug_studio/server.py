"""The studio's web application: pages, the JSON API the pages call, and live run events.

FastAPI (on Starlette) serves Jinja2 pages and a small vanilla-JS front end shipped in ``static/``; live
progress is server-sent events. Recipes are checked by ``loraplug.toolkit.check_recipe`` (``recipe
check`` itself) and runs read by ``loraplug.toolkit.read_run(s)`` (``runs list``/``runs show``), so the
studio and the CLI cannot disagree. docs/studio.md explains the choices.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shutil
import socket
import threading
import tomllib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import tomli_w
from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

import loraplug
from loraplug import LoraplugError, PluginHost, RunStatus
from loraplug.toolkit import RunInfo, atomic_write_text, check_recipe, human_size, read_run, read_runs
from loraplug_studio import dataset, forms, jobs
from loraplug_studio.paths import OutsideRoot, confined, relative
from loraplug_studio.runview import duration, export_kinds, flatten, load_snippet, log_tail
from loraplug_studio.security import Guard, is_loopback, session_of

PACKAGE = Path(__file__).parent
#: The studio's own files (drafts, queue, job logs), inside the root, hidden.
STATE_DIR = ".loraplug-studio"
#: Where recipes are listed from, under the root (the repository's layout).
RECIPES_DIR = "recipes"
#: Where runs are listed from, under the root (``run.output_dir``'s default).
RUNS_DIR = "runs"
#: The HTML report `loraplug runs show` writes into a run directory.
REPORT_FILE = "report.html"
#: How often the queue and the live pages look at the disk.
POLL_SECONDS = 1.0


class Studio:
    """One studio: its root, plugin host, queue and undo history."""

    def __init__(self, root: Path, host: PluginHost | None = None) -> None:
        self.root = root.resolve()
        self.state = self.root / STATE_DIR
        self.host = host or loraplug.load_plugins()
        self.jobs = jobs.Jobs(self.root, self.state)
        self.undo = dataset.UndoHistory()
        self.captioning = dataset.AutoCaption()

    def path(self, text: str, key: str = "path") -> Path:
        return confined(self.root, text, key=key)

    # -- recipes ------------------------------------------------------------------------------------

    def recipes(self) -> list[str]:
        found = [*sorted((self.root / RECIPES_DIR).glob("*.toml")), *sorted(self.root.glob("*.toml"))]
        return [relative(self.root, p) for p in found if p.is_file()]

    def write_snapshot(self, form: dict[str, Any], base: str, name: str, folder: Path) -> Path:
        """The form as a recipe file in ``folder`` (input paths made absolute against ``base``)."""
        base_dir = self.path(base, key="base")
        table = forms.absolute_paths(forms.recipe_table(form, self.host), base_dir, self.host)
        stem = Path(name).stem if name else "recipe"
        if not re.fullmatch(r"\w[\w.+\- ]*", stem):
            stem = "recipe"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{stem}.toml"
        atomic_write_text(target, tomli_w.dumps(table))
        return target

    def check(self, body: dict[str, Any]) -> tuple[Any, Path | None, list[str]]:
        """``(recipe, snapshot, problems)`` for a form: ``recipe check``'s verdict on it."""
        folder = self.state / "drafts" / uuid.uuid4().hex
        try:
            snapshot = self.write_snapshot(
                body.get("form", {}), body.get("base", ""), body.get("name", ""), folder
            )
        except forms.FormError as exc:
            return None, None, [str(exc)]
        try:
            recipe = check_recipe(snapshot, self.host, overrides(body), smoke=bool(body.get("smoke")))
        except LoraplugError as exc:
            problems = getattr(exc, "problems", None) or [exc.what]
            shown = [re.sub(re.escape(str(snapshot)) + r"(:\d+)?", "the form", p) for p in problems]
            return None, snapshot, shown
        return recipe, snapshot, []

    # -- runs -----------------------------------------------------------------------------------------

    def runs(self) -> list[RunInfo]:
        root = self.root / RUNS_DIR
        return read_runs(root) if root.is_dir() else []

    def run_view(self, info: RunInfo, *, full: bool = True) -> dict[str, Any]:
        best = info.best()
        view: dict[str, Any] = {
            "path": relative(self.root, info.path),
            "name": info.name,
            "status": info.status,
            "step": info.step,
            "total_steps": info.total_steps,
            "best": None if best is None else {"metric": best.metric, "value": best.value, "step": best.step},
            "started_at": info.recorded.started_at,
            "finished_at": info.recorded.finished_at,
            # A run that ended without recording its end (killed) has no duration to show.
            "duration": duration(info.recorded.started_at, info.recorded.finished_at)
            if info.recorded.finished_at or info.status in ("running", "exporting")
            else None,
            "smoke": info.recorded.smoke,
            "problem": info.problem,
            "error": info.recorded.error,
            "model": str(info.recipe.get("model", {}).get("kind", "")),
            "pretrained": str(info.recipe.get("model", {}).get("pretrained", "")),
        }
        job = self.jobs.for_run(view["path"])
        view["job"] = (
            None
            if job is None
            else {"id": job.id, "state": job.state, "log": relative(self.root, Path(job.log))}
        )
        if full:
            view["series"] = {f"{split}/{name}": points for (split, name), points in info.series().items()}
            view["samples"] = [{"step": s.step, "records": s.records} for s in info.samples[-4:]]
            view["exports"] = [
                {
                    **manifest,
                    "files": [
                        {**f, "human": human_size(int(f.get("size", 0)))} for f in manifest.get("files", [])
                    ],
                }
                for manifest in info.exports
            ]
            view["recipe"] = info.recipe
            view["log_tail"] = log_tail(Path(job.log)) if job is not None else ""
            report = info.path / REPORT_FILE
            view["report"] = relative(self.root, report) if report.is_file() else None
        return view

    def read_run(self, path: str) -> RunInfo:
        return read_run(self.path(path))

    def view_of(self, path: str) -> dict[str, Any]:
        """The run at ``path``, or, before its process has written ``run.json``, its job's state and output."""
        target = self.path(path)
        if (target / "run.json").is_file():
            return self.run_view(read_run(target))
        job = self.jobs.for_run(relative(self.root, target))
        if job is None:
            raise LoraplugError(f"{path} holds no run", fix="Pick a run on the Runs page")
        # A job that ended without writing run.json failed before training (its output says why).
        status = {jobs.QUEUED: "waiting", jobs.STARTED: "starting", jobs.CANCELLED: "cancelled"}.get(
            job.state, "failed"
        )
        return {
            "path": relative(self.root, target), "name": target.name, "status": status, "step": 0,
            "total_steps": None, "best": None, "error": None, "smoke": job.smoke, "series": {}, "samples": [],
            "exports": [], "recipe": {}, "log_tail": log_tail(Path(job.log)),
            "job": {"id": job.id, "state": job.state, "log": relative(self.root, Path(job.log))},
        }  # fmt: skip


def overrides(body: dict[str, Any]) -> list[str]:
    """The form's override lines (``train.lr=1e-4``), as `loraplug run` takes them."""
    text = body.get("overrides") or ""
    lines = [
        line.strip() for line in str(text).splitlines() if line.strip() and not line.strip().startswith("#")
    ]
    for line in lines:
        if line.startswith("-"):  # an option of `loraplug run`, not an override: the form has those
            raise LoraplugError(
                f"override {line!r} is not KEY=VALUE",
                fix="Write one dotted key=value per line (~key deletes a key)",
            )
    return lines


def error_response(exc: LoraplugError) -> JSONResponse:
    status = 403 if isinstance(exc, OutsideRoot) else 409 if isinstance(exc, dataset.NeedsConfirm) else 400
    return JSONResponse(
        {"error": exc.what, "fix": exc.fix, "confirm": isinstance(exc, dataset.NeedsConfirm)}, status
    )


def create_app(
    root: Path, *, token: str | None = None, bind: str = "127.0.0.1", host: PluginHost | None = None
) -> FastAPI:
    """The studio for ``root``. ``token`` guards every request (required when ``bind`` is not loopback)."""
    if token is None and not is_loopback(bind):
        raise LoraplugError(
            f"--host {bind} exposes the studio beyond this machine, which needs a token",
            fix="Pass --token, or let the studio print a random one (it does when --host is not loopback)",
        )
    studio = Studio(root, host)
    guard = Guard(token=token, bind=bind)
    stop_ticking = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        def tick() -> None:
            while not stop_ticking.wait(POLL_SECONDS):
                try:
                    studio.jobs.tick()
                except OSError:
                    pass  # a disk hiccup: the next tick tries again

        thread = threading.Thread(target=tick, name="studio-queue", daemon=True)
        thread.start()
        yield
        stop_ticking.set()

    app = FastAPI(title="loraplug studio", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.studio = studio
    app.state.guard = guard
    app.middleware("http")(guard)
    app.mount("/static", StaticFiles(directory=PACKAGE / "static"), name="static")
    templates = Jinja2Templates(directory=PACKAGE / "templates")

    @app.exception_handler(LoraplugError)
    async def _loraplug_error(request: Request, exc: LoraplugError) -> JSONResponse:
        return error_response(exc)

    def page(request: Request, name: str, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(
            request,
            name,
            {"csrf": guard.csrf, "root": str(studio.root), "page": name.removesuffix(".html"), **context},
        )

    # -- pages ----------------------------------------------------------------------------------------

    @app.get("/")
    def index() -> RedirectResponse:
        return RedirectResponse("/new", 303)

    @app.get("/new", response_class=HTMLResponse)
    def new_run(request: Request, recipe: str = "") -> HTMLResponse:
        return page(request, "new.html", recipe=recipe)

    @app.get("/runs", response_class=HTMLResponse)
    def runs_page(request: Request) -> HTMLResponse:
        views = [studio.run_view(info, full=False) for info in studio.runs()]
        queued = [j for j in studio.jobs.all() if j.state == jobs.QUEUED]
        return page(request, "runs.html", runs=views, queued=queued)

    @app.get("/run", response_class=HTMLResponse)
    def run_page(request: Request, path: str) -> HTMLResponse:
        view = studio.view_of(path)
        view["export_kinds"] = export_kinds(studio.host, view["recipe"])
        for manifest in view["exports"]:
            manifest["snippet"] = load_snippet(manifest, view["path"], studio.root)
        return page(request, "run.html", run=view, run_json=json.dumps(view, default=str))

    @app.get("/compare", response_class=HTMLResponse)
    def compare_page(request: Request, path: Annotated[list[str], Query()]) -> HTMLResponse:
        views = [studio.run_view(studio.read_run(p)) for p in path]
        flat = [flatten(v["recipe"]) for v in views]
        keys = sorted({k for f in flat for k in f})
        diff = [
            (k, [f.get(k) for f in flat])
            for k in keys
            if len({json.dumps(f.get(k), default=str) for f in flat}) > 1
        ]
        series = [
            {"name": v["name"] + (" (smoke)" if v["smoke"] else ""), "series": v["series"]} for v in views
        ]
        return page(request, "compare.html", runs=views, diff=diff, series_json=json.dumps(series))

    @app.get("/dataset", response_class=HTMLResponse)
    def dataset_page(request: Request, path: str = "") -> HTMLResponse:
        target = studio.path(path) if path else None
        context: dict[str, Any] = {"path": path, "folders": dataset.candidate_datasets(studio.root)}
        if target is not None and target.is_dir():
            items = [
                {
                    "image": relative(studio.root, image),
                    "name": image.name,
                    "caption": dataset.read_caption(image),
                }
                for image in dataset.images(target)
            ]
            context |= {"kind": "images", "items": items, "tags": dataset.tag_frequencies(target)}
        elif target is not None and target.suffix == ".jsonl" and target.is_file():
            records, count, problems = dataset.read_jsonl(target)
            context |= {
                "kind": "jsonl",
                "records": [json.dumps(r, ensure_ascii=False) for r in records],
                "count": count,
                "problems": problems,
            }
        elif target is not None:
            raise LoraplugError(
                f"{path} is neither an image folder nor a .jsonl file", fix="Pick one from the list"
            )
        return page(request, "dataset.html", **context)

    @app.get("/files")
    def files(path: str) -> FileResponse:
        target = studio.path(path)
        if not target.is_file():
            raise LoraplugError(f"{path} is not a file", fix="Reload the page")
        # A run's report.html is shown, never trusted: no script of a served file runs with the studio's origin.
        headers = {"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"}
        return FileResponse(target, headers=headers)

    # -- the New-run API --------------------------------------------------------------------------------

    @app.get("/api/schema")
    def api_schema() -> dict[str, Any]:
        return forms.schema(studio.host)

    @app.get("/api/browse")
    def api_browse(path: str = "") -> dict[str, Any]:
        """A folder's entries, for the path picker: a server-side browser, confined to the root."""
        target = studio.path(path)
        if not target.is_dir():
            raise LoraplugError(f"{path} is not a folder", fix="Pick a folder")
        entries = sorted(
            (p for p in target.iterdir() if not p.name.startswith(".")),
            key=lambda p: (not p.is_dir(), p.name),
        )
        here = "" if target == studio.root else relative(studio.root, target)
        return {
            "path": here,
            "parent": None
            if target == studio.root
            else ("" if target.parent == studio.root else relative(studio.root, target.parent)),
            "entries": [
                {"name": p.name, "dir": p.is_dir(), "path": relative(studio.root, p)} for p in entries[:500]
            ],
        }

    @app.get("/api/recipes")
    def api_recipes() -> dict[str, Any]:
        return {"recipes": studio.recipes()}

    @app.get("/api/recipe")
    def api_recipe(path: str) -> dict[str, Any]:
        target = studio.path(path)
        try:
            table = tomllib.loads(target.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise LoraplugError(f"{path} cannot be read ({exc})", fix="Pick a recipe file") from None
        except tomllib.TOMLDecodeError as exc:
            raise LoraplugError(
                f"{path} is not valid TOML: {exc}", fix="Fix it in an editor, or run `loraplug recipe check`"
            ) from None
        return {
            "path": path,
            "base": relative(studio.root, target.parent),
            "name": target.name,
            "form": forms.form_values(table, studio.host),
        }

    @app.post("/api/check")
    async def api_check(request: Request) -> dict[str, Any]:
        body = await request.json()
        recipe, snapshot, problems = await asyncio.to_thread(studio.check, body)
        if snapshot is not None:
            shutil.rmtree(snapshot.parent, ignore_errors=True)
        try:
            text = tomli_w.dumps(forms.recipe_table(body.get("form", {}), studio.host))
        except (forms.FormError, TypeError):
            text = ""
        return {
            "ok": not problems,
            "problems": problems,
            "toml": text,
            "run_name": recipe.run.name if recipe else None,
        }

    @app.post("/api/save")
    async def api_save(request: Request) -> dict[str, Any]:
        body = await request.json()
        target = studio.path(str(body.get("path", "")), key="save path")
        if target.suffix != ".toml":
            raise LoraplugError(
                f"{body.get('path')!r} does not end in .toml", fix="Save the recipe as NAME.toml"
            )
        if target.exists() and not body.get("confirm"):
            raise dataset.NeedsConfirm(f"{relative(studio.root, target)} exists; replace it?")
        try:
            text = tomli_w.dumps(forms.recipe_table(body.get("form", {}), studio.host))
        except forms.FormError as exc:
            raise LoraplugError(str(exc), fix="Fix the value in the form") from None
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, text)
        return {"saved": relative(studio.root, target)}

    @app.post("/api/launch")
    async def api_launch(request: Request) -> JSONResponse:
        body = await request.json()
        recipe, snapshot, problems = await asyncio.to_thread(studio.check, body)
        if problems or recipe is None or snapshot is None:
            if snapshot is not None:
                shutil.rmtree(snapshot.parent, ignore_errors=True)
            return JSONResponse({"problems": problems}, 400)
        output = Path(recipe.run.output_dir)
        run_dir = (output if output.is_absolute() else studio.root / output) / recipe.run.name
        shown = (
            relative(studio.root, run_dir) if run_dir.resolve().is_relative_to(studio.root) else str(run_dir)
        )
        earlier = RunStatus.load(run_dir)
        # Said before anything is queued (the run would refuse it only after loading the plugins): a newcomer
        # who ran `make demo` and launches the quickstart again is told how to go on.
        if earlier is not None and not body.get("overwrite") and not (body.get("smoke") and earlier.smoke):
            shutil.rmtree(snapshot.parent, ignore_errors=True)
            taken = (
                f"{shown} already holds a run: give run.name another name, or tick --overwrite to replace it"
            )
            return JSONResponse({"problems": [taken]}, 400)
        # The snapshot moves beside the queue: the run reads it, and a resume reads it again.
        kept = studio.state / "recipes" / f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
        kept.parent.mkdir(parents=True, exist_ok=True)
        snapshot.parent.rename(kept)
        job = studio.jobs.enqueue(
            kept / snapshot.name,
            overrides(body),
            run_dir=shown,
            smoke=bool(body.get("smoke")),
            overwrite=bool(body.get("overwrite")),
        )
        return JSONResponse({"job": job.id, "run": job.run_dir, "state": job.state})

    # -- runs ---------------------------------------------------------------------------------------------

    @app.get("/api/jobs")
    def api_jobs() -> dict[str, Any]:
        return {"jobs": [j.__dict__ for j in studio.jobs.all()]}

    @app.get("/api/run")
    def api_run(path: str) -> dict[str, Any]:
        return studio.view_of(path)

    @app.get("/api/run/events")
    async def api_run_events(request: Request, path: str) -> StreamingResponse:
        studio.path(path)  # refused here when outside the root

        async def events() -> AsyncIterator[str]:
            last = ""
            waited = 0.0
            while not await request.is_disconnected():
                try:
                    view = await asyncio.to_thread(studio.view_of, path)
                except LoraplugError:
                    view = None
                text = json.dumps(view, default=str)
                if view is not None and text != last:
                    last, waited = text, 0.0
                    yield f"data: {text}\n\n"
                await asyncio.sleep(POLL_SECONDS)
                waited += POLL_SECONDS
                if waited >= 15:  # a comment keeps proxies from closing a quiet stream
                    waited = 0.0
                    yield ": still here\n\n"

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    @app.post("/api/stop")
    async def api_stop(request: Request) -> dict[str, Any]:
        body = await request.json()
        target = studio.path(str(body.get("path", "")))
        return {"signalled": jobs.stop_run(target, studio.jobs)}

    @app.post("/api/resume")
    async def api_resume(request: Request) -> dict[str, Any]:
        body = await request.json()
        path = str(body.get("path", ""))
        target = studio.path(path)
        info = read_run(target)
        if info.status in ("running", "exporting"):
            raise LoraplugError(f"{info.name} is still running", fix="Stop it first, or wait for it to end")
        job = studio.jobs.for_run(relative(studio.root, target))
        if job is not None:
            recipe, extra, smoke = Path(job.recipe), job.overrides, job.smoke
        else:  # a run the studio did not start: its resolved recipe, as `loraplug run RUN/recipe.toml --resume`
            recipe, extra, smoke = target / "recipe.toml", [], False
        resumed = studio.jobs.enqueue(
            recipe, extra, run_dir=relative(studio.root, target), smoke=smoke, resume=True
        )
        return {"job": resumed.id, "state": resumed.state}

    @app.post("/api/export")
    async def api_export(request: Request) -> dict[str, Any]:
        """Queue ``loraplug export RUN --kind KIND`` (another kind, or the same one again with overwrite)."""
        body = await request.json()
        target = studio.path(str(body.get("path", "")))
        info = read_run(target)
        kind = str(body.get("kind", ""))
        offered = export_kinds(studio.host, info.recipe)
        if kind not in offered:
            raise LoraplugError(
                f"{kind!r} is not an export kind for this run's model and adapter",
                fix=f"Pick one of: {', '.join(offered) or 'none installed'}",
            )
        if info.status != "finished":
            raise LoraplugError(f"{info.name} is {info.status}, not finished", fix="Export a finished run")
        job = studio.jobs.enqueue(
            target,
            [],
            run_dir=relative(studio.root, target),
            smoke=False,
            overwrite=bool(body.get("overwrite")),
            export_kind=kind,
        )
        return {"job": job.id, "state": job.state}

    @app.post("/api/cancel")
    async def api_cancel(request: Request) -> dict[str, Any]:
        body = await request.json()
        return {"cancelled": studio.jobs.cancel(str(body.get("job", ""))).id}

    # -- dataset --------------------------------------------------------------------------------------------

    @app.post("/api/caption")
    async def api_caption(request: Request) -> dict[str, Any]:
        body = await request.json()
        image = studio.path(str(body.get("path", "")))
        edit = dataset.write_caption(image, str(body.get("text", "")), confirm=bool(body.get("confirm")))
        studio.undo.record(session_of(request), [edit] if edit else [])
        return {"written": edit is not None, "caption": relative(studio.root, dataset.caption_path(image))}

    @app.post("/api/tags")
    async def api_tags(request: Request) -> dict[str, Any]:
        body = await request.json()
        folder = studio.path(str(body.get("path", "")))
        changes = dataset.bulk_tags(
            folder, str(body.get("op", "")), str(body.get("tag", "")), str(body.get("new", ""))
        )
        if not body.get("confirm"):
            return {"would_change": len(changes), "confirm": True}
        edits = [
            dataset.Edit(dataset.caption_path(image), dataset.read_caption(image)) for image, _ in changes
        ]
        for image, text in changes:
            atomic_write_text(dataset.caption_path(image), text)
        studio.undo.record(session_of(request), edits)
        return {"changed": len(changes)}

    @app.get("/api/caption-kinds")
    def api_caption_kinds() -> dict[str, Any]:
        return {"kinds": forms.stage_kinds(studio.host, "caption")}

    @app.get("/api/autocaption")
    def api_autocaption_progress() -> dict[str, Any]:
        return studio.captioning.progress

    @app.post("/api/autocaption")
    async def api_autocaption(request: Request) -> dict[str, Any]:
        body = await request.json()
        folder = studio.path(str(body.get("path", "")))
        kind = str(body.get("kind", ""))
        known = {k["name"]: k for k in forms.stage_kinds(studio.host, "caption")}
        if kind not in known:
            raise LoraplugError(
                f"{kind!r} is not an installed caption kind",
                fix=f"Pick one of: {', '.join(known) or 'none (pip install loraplug-caption)'}",
            )
        try:
            options = forms.parse_options(known[kind]["fields"], dict(body.get("options") or {}), "caption")
        except forms.FormError as exc:
            raise LoraplugError(str(exc), fix="Fix the value in the form") from None
        overwrite = bool(body.get("overwrite"))
        if overwrite and not body.get("confirm"):
            raise dataset.NeedsConfirm("Replace the captions that already exist in this folder?")
        prefix = [t.strip() for t in str(body.get("prefix", "")).split(",") if t.strip()]
        session = session_of(request)
        studio.captioning.start(
            folder, kind, options, overwrite=overwrite, prefix=prefix, host=studio.host,
            done=lambda edits: studio.undo.record(session, edits),
        )  # fmt: skip
        return studio.captioning.progress

    @app.post("/api/undo")
    async def api_undo(request: Request) -> dict[str, Any]:
        restored = studio.undo.undo(session_of(request))
        return {"restored": [relative(studio.root, p) for p in restored]}

    return app


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, or one clear error when the system refuses it (the port in use,
    a privileged port, an address this machine does not have) — before the address is printed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise LoraplugError(
            f"The studio cannot listen on {host}:{port}: {exc.strerror or exc}",
            where="--host / --port",
            fix="Choose another --port (another program, or another studio, may be using this one), or a --host "
            "address this machine has",
        ) from exc
    return sock


def serve(*, host: str, port: int, roots: list[Path], token: str | None, open_browser: bool) -> None:
    """Run the studio until Ctrl-C (its runs keep training: they are their own processes)."""
    import uvicorn

    if len(roots) != 1:
        raise LoraplugError("The studio serves one root directory", fix="Pass --root once")
    root = roots[0]
    if not root.is_dir():
        raise LoraplugError(f"--root {root} is not a directory", fix="Pass an existing directory")
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(18)
    app = create_app(root, token=token, bind=host)
    sock = listening_socket(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{port}/" + (
        f"?token={token}" if token else ""
    )
    print(
        f"loraplug studio: {url}  (root {root.resolve()}; Ctrl-C stops the studio, not its runs)", flush=True
    )
    if open_browser:
        import webbrowser

        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    # Open event streams never end by themselves: Ctrl-C closes them after 2 s instead of waiting forever.
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # the second Ctrl-C during shutdown, as uvicorn.run treats it
        pass
