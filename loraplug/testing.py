"""Helpers for testing loraplug and its plugins — first-party or third-party — with pytest.

``run_cli`` runs the real CLI in-process and captures what a user would see; ``write_recipe`` writes a
recipe file from Python dicts; ``plugin_dist`` installs a plugin module as a real distribution with an
entry point (a ``.dist-info`` directory on ``sys.path``), so discovery is tested exactly as it happens
after ``pip install`` (``plugins_installed`` installs one for a block). ``ToyRegressor`` is a whole modality to test against — rows of numbers, a small
MLP, its LoRA, samples, an export and its deployable view — in pure torch (``toy_plugin_dist`` installs
it; ``toy_recipe`` writes a recipe for it). loraplug's own tests run on it.
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import Field

from loraplug.bundles import Batch, DataBundle, ExportResult, ModelBundle, PreparedData, Sample, StepResult
from loraplug.context import RunContext
from loraplug.deploy import Deployable, MergeCheck
from loraplug.hookspecs import hookimpl
from loraplug.kinds import KindSpec
from loraplug.options import InputFile, Options


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str | Path) -> CliResult:
    """Run ``loraplug ARGS`` in this process; return its exit code and output."""
    from loraplug.cli import main as cli_main
    from loraplug.cli import shared

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        shared.console.file = out
        shared.err_console.file = err
        try:
            code = cli_main.main([str(a) for a in args])
        finally:
            # None: back to the consoles' default (sys.stdout/stderr); rich's setter is typed IO[str] only.
            shared.console.file = None  # type: ignore[assignment]
            shared.err_console.file = None  # type: ignore[assignment]
    return CliResult(code, out.getvalue(), err.getvalue())


#: The `loraplug` program as a user starts it (``main()`` reading sys.argv), then what it had imported.
_PROGRAM = """
import json, sys
sys.argv = ["loraplug", *{args!r}]
from loraplug.cli.main import main
code = main()
print("LOADED=" + json.dumps(sorted(name for name in {names!r} if sys.modules.get(name) is not None)), file=sys.stderr)
sys.exit(code)
"""


def run_program(
    cwd: Path, *args: str, watch: Sequence[str], env: Mapping[str, str] | None = None
) -> tuple[set[str], str]:
    """``loraplug ARGS`` in a fresh process, started as a user starts it (working directory ``cwd``):
    which modules of ``watch`` it had imported when it ended, and its output. It must exit 0.

    Unlike :func:`run_cli`, this is the program itself, so process-wide decisions it makes (which
    optional libraries to keep out, loraplug.optional) are the ones a user's run makes.
    """
    import os
    import subprocess
    import sys

    code = _PROGRAM.format(args=list(args), names=list(watch))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    loaded = json.loads(proc.stderr.rsplit("LOADED=", 1)[1].splitlines()[0])
    return set(loaded), output


def torchrun(
    recipe: Path, *args: str, cwd: Path, fault: str = "", env: Mapping[str, str] | None = None
) -> Any:
    """``loraplug run RECIPE ARGS`` in 2 processes under torchrun (gloo on CPUs), one thread each;
    ``fault`` is a test-only fault (``LORAPLUG_FAULT``, loraplug.training.faults). Returns the
    ``subprocess.CompletedProcess`` with its output captured."""
    import sys

    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    return _launch(launcher, recipe, *args, cwd=cwd, fault=fault, env=env)


def accelerate_launch(
    recipe: Path,
    *args: str,
    config: Path,
    cwd: Path,
    fault: str = "",
    env: Mapping[str, str] | None = None,
    port: int | None = None,
) -> Any:
    """``loraplug run RECIPE ARGS`` under ``accelerate launch --config_file CONFIG`` (e.g. 2 processes
    with FSDP on CPUs), one thread each, on ``port`` (default: a free one, as tests run side by side;
    launches that form one run across "machines" share one from :func:`free_port`); otherwise as
    :func:`torchrun`."""
    import sys

    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    launcher += ["--main_process_port", str(port or free_port())]
    return _launch(launcher, recipe, *args, cwd=cwd, fault=fault, env=env)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def deepspeed_config(stage: int, *, processes: int = 2, precision: str = "no") -> str:
    """What ``accelerate config`` writes for DeepSpeed ZeRO on one machine (docs/distributed.md). Its
    accumulation steps and clipping are replaced by the recipe's (the run says so)."""
    return (
        "compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\nnum_machines: 1\n"
        f"num_processes: {processes}\nmachine_rank: 0\nmixed_precision: '{precision}'\ndeepspeed_config:\n"
        f"  zero_stage: {stage}\n  gradient_accumulation_steps: 1\n  gradient_clipping: 1.0\n"
        "  offload_optimizer_device: none\n  offload_param_device: none\n  zero3_init_flag: false\n"
    )


def launch_errors(launched: Any) -> str:
    """What a failed :func:`torchrun` / :func:`accelerate_launch` said: the processes' own lines
    (``[rankN]:``, ``error:``) and the launcher's last lines."""
    stdout: str = launched.stdout
    stderr: str = launched.stderr
    own = (
        line
        for line in (stdout + stderr).splitlines()
        if line.startswith(("[rank", "error:", "unexpected error:"))
    )
    return "\n".join(own) + stderr[-2000:]


def logged_losses(run_dir: Path) -> list[tuple[int, str, float]]:
    """``(step, "loss" | "val_loss", value)`` for each loss a run logged, in order."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], k, r[k]) for r in rows for k in ("loss", "val_loss") if k in r]


def assert_same_tensors(a: Mapping[str, Any], b: Mapping[str, Any], atol: float) -> None:
    """The same names, shapes and values (``b`` against ``a``, within ``atol``; 0 is bitwise)."""
    import torch

    assert a.keys() == b.keys()  # noqa: S101
    for key in a:
        assert a[key].shape == b[key].shape, key  # noqa: S101
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=atol, msg=key)


def _launch(
    launcher: list[str], recipe: Path, *args: str, cwd: Path, fault: str, env: Mapping[str, str] | None
) -> Any:
    import os
    import subprocess

    command = [*launcher, "-m", "loraplug", "run", str(recipe), *args]
    environment = {**os.environ, "LORAPLUG_FAULT": fault, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=environment, cwd=cwd, timeout=600)


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    """Write ``recipe`` (section name → table; ``export`` → list of tables) as TOML to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(recipe), encoding="utf-8")
    return path


def plugin_dist(
    site: Path,
    *,
    distribution: str,
    module: str,
    source: str | None = None,
    package: Path | None = None,
    version: str = "0.1.0",
) -> Path:
    """Create an installed-looking distribution in ``site`` whose entry point loads ``module``.

    The plugin is either one module's ``source`` text, or a ``package`` directory (your plugin's
    ``my_plugin/`` with its ``__init__.py``), copied into ``site`` as ``module``. Put ``site`` on
    ``sys.path`` (or ``PYTHONPATH`` for a subprocess) to make loraplug discover it.
    """
    if (source is None) == (package is None):
        raise TypeError(
            "plugin_dist takes one of source= (a module's text) or package= (a package directory)"
        )
    site.mkdir(parents=True, exist_ok=True)
    if package is not None:
        import shutil

        shutil.copytree(
            package, site / module, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True
        )
    else:
        assert source is not None  # noqa: S101 — checked above
        (site / f"{module}.py").write_text(source, encoding="utf-8")
    info = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(f"[loraplug]\n{module} = {module}\n", encoding="utf-8")
    return site


@contextmanager
def plugins_installed(site: Path) -> Iterator[Path]:
    """While in the block, the distributions in ``site`` (:func:`plugin_dist`) are installed: for the CLI in
    this process (:func:`run_cli`, discovering them by entry point as after ``pip install``) and for
    subprocesses (``PYTHONPATH``). Everything is put back afterwards."""
    import importlib
    import os
    import sys

    from loraplug import plugins

    path, pythonpath, loaded = list(sys.path), os.environ.get("PYTHONPATH"), plugins._loaded
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), pythonpath]))
    importlib.invalidate_caches()
    plugins._loaded = None  # load_plugins() discovers them afresh
    try:
        yield site
    finally:
        sys.path[:] = path
        if pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = pythonpath
        importlib.invalidate_caches()
        plugins._loaded = loaded


def run_with_site(
    site: Path, *args: str | Path, cwd: Path, env: Mapping[str, str] | None = None, trace_hooks: bool = True
) -> Any:
    """``loraplug ARGS`` in a fresh process (working directory ``cwd``) that discovers the distributions in
    ``site`` (:func:`plugin_dist`) besides those installed, each hook call traced on stderr
    (``LORAPLUG_TRACE_HOOKS``) unless ``trace_hooks`` is false; ``env`` adds to the environment. Returns
    the ``subprocess.CompletedProcess`` with its output captured, whatever its exit status."""
    import os
    import subprocess
    import sys

    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
    }
    if trace_hooks:
        environment["LORAPLUG_TRACE_HOOKS"] = "1"
    environment.update(env or {})
    command = [sys.executable, "-m", "loraplug", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=environment, cwd=cwd, timeout=600)


# -- a toy modality: the plugin contract with nothing but torch ---------------------------------------
# Neither text nor image: rows of numbers regressed by a small MLP. It serves a data kind, a model kind
# (with its deployable view, so exporters of any modality export it, and samples), a `lora` adapter and a
# `toy-weights` export, and trains in a second. Its LoRA is a few lines of plain torch, not peft (which
# imports transformers): the core's own tests run on it, proving the core needs no modality library.
# Register it in-process with `PluginHost.load(extra=[ExtraPlugin(ToyRegressor(), TOY_DISTRIBUTION)])`,
# or installed, for the CLI, with `toy_plugin_dist(site)`.

TOY_DISTRIBUTION = "loraplug-toy"
TOY_MODEL = "toy-regressor"
#: The record shape the toy data kind produces and the toy model trains on.
TOY_ROWS = "number-rows"
#: The MLP's linear layers, by name: what the `lora` adapter adapts.
TOY_LAYERS = ("hidden", "out")
#: How many numbers a row of :func:`toy_rows` holds (``model.features`` of :func:`toy_recipe`).
TOY_FEATURES = 3


class ToyRowsOptions(Options):
    """``[data] kind = "toy-rows"``: JSONL of ``{"x": [numbers], "y": number}``.

    ``"y": null`` is a row without a target: it is computed but counts for no loss term (as a prompt's
    tokens in a causal LM), so micro-batches hold different numbers of targets. Other fields are kept
    (``data.balance_by`` may name one).
    """

    path: InputFile
    val_path: InputFile | None = None


class ToyRegressorOptions(Options):
    """``[model] kind = "toy-regressor"``: an MLP ``features → hidden → 1``, initialised from ``run.seed``.

    A sample prompt is a row: the numbers written in it (``"0.5, -1, 2"``); its sample is the prediction.
    """

    features: int = Field(ge=1, le=1024)
    hidden: int = Field(16, ge=1, le=1024)


class ToyLoraOptions(Options):
    """``[adapter] kind = "lora"`` for the toy regressor: LoRA on its linear layers, in plain torch."""

    r: int = Field(4, ge=1, le=256)
    alpha: float = Field(8.0, gt=0, le=1024)
    dropout: float = Field(0.0, ge=0, lt=1)


class ToyWeightsOptions(Options):
    """``[[export]] kind = "toy-weights"``: the merged MLP as safetensors, its config and a model card."""

    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    model_card: bool = True


def toy_rows(count: int, *, seed: int = 0, features: int = TOY_FEATURES) -> list[dict[str, Any]]:
    """``count`` rows ``{"x": [...], "y": ...}`` of a fixed linear function, drawn from ``seed``."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        x = [round(rng.uniform(-1, 1), 4) for _ in range(features)]
        rows.append({"x": x, "y": round(sum((-1) ** i * (i + 1) * v for i, v in enumerate(x)), 4)})
    return rows


def toy_recipe(directory: Path, **changes: Any) -> Path:
    """A recipe for the toy regressor that trains in a second: ``toy_recipe(tmp_path, train={"max_steps": 2})``.

    Each keyword updates one section's table (a list replaces ``export``; ``None`` removes a key:
    ``data={"val_path": None}`` trains without validation). Writes ``train.jsonl`` and
    ``val.jsonl`` (24 and 8 rows) and ``recipe.toml`` into ``directory``; the run is ``runs/tiny``.
    """
    import json

    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in {"train.jsonl": toy_rows(24), "val.jsonl": toy_rows(8, seed=1)}.items():
        (directory / name).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    recipe: dict[str, Any] = {
        "run": {"name": "tiny", "output_dir": str(directory / "runs"), "seed": 7},
        "data": {
            "kind": "toy-rows",
            "path": str(directory / "train.jsonl"),
            "val_path": str(directory / "val.jsonl"),
        },
        "model": {"kind": TOY_MODEL, "features": TOY_FEATURES, "hidden": 8},
        "adapter": {"kind": "lora", "r": 4, "alpha": 8},
        "train": {"max_steps": 4, "batch_size": 4, "lr": 1e-2, "log_every_n_steps": 2},
        "eval": {"sample_prompts": ["0.5, -1, 2"]},
        "export": [{"kind": "toy-weights"}],
    }
    for section, values in changes.items():
        if isinstance(values, list):
            recipe[section] = values
        else:
            table = recipe.setdefault(section, {})
            table.update(values)
            recipe[section] = {key: value for key, value in table.items() if value is not None}
    return write_recipe(directory / "recipe.toml", recipe)


def _toy_rows(path: Path) -> list[dict[str, Any]]:
    import json

    from loraplug.errors import LoraplugError

    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            row = json.loads(line)
            target = None if row["y"] is None else float(row["y"])
            rows.append({**row, "id": where, "x": [float(v) for v in row["x"]], "y": target})
        except (ValueError, KeyError, TypeError) as exc:
            raise LoraplugError(
                f"{where} is not a row of numbers ({exc})",
                where=where,
                fix='Write {"x": [1.0, 2.0], "y": 3.0}',
            ) from exc
    return rows


def _toy_collate(rows: list[dict[str, Any]]) -> Batch:
    import torch

    x = torch.tensor([row["x"] for row in rows], dtype=torch.float32)
    y = torch.tensor([0.0 if row["y"] is None else row["y"] for row in rows], dtype=torch.float32)
    mask = torch.tensor([row["y"] is not None for row in rows], dtype=torch.float32)
    targets = sum(row["y"] is not None for row in rows)
    return Batch(
        inputs={"x": x, "y": y, "mask": mask},
        num_targets=targets,
        num_tokens=len(rows),
        sample_ids=[r["id"] for r in rows],
    )


def _toy_probe(module: Any, inputs: dict[str, Any]) -> Any:
    return module(inputs["rows"]).squeeze(-1).float()


def _toy_batch_outputs(module: Any, batch: Batch) -> Any:
    import torch

    with torch.no_grad():
        return _toy_probe(module, {"rows": batch.inputs["x"].to(next(module.parameters()).device)}).cpu()


def _toy_mse(module: Any, batches: Any) -> dict[str, float]:
    total, count = 0.0, 0
    for batch in batches:
        errors = (_toy_batch_outputs(module, batch) - batch.inputs["y"]) ** 2
        total += float((errors * batch.inputs["mask"]).sum())
        count += batch.num_targets
    return {"mse": total / max(count, 1)}


def _prompt_row(prompt: str, features: int) -> list[float]:
    """The numbers written in a sample prompt: the row to predict."""
    import re

    from loraplug.errors import LoraplugError

    numbers = [float(n) for n in re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", prompt)]
    if len(numbers) != features:
        raise LoraplugError(
            f"The sample prompt {prompt!r} holds {len(numbers)} numbers; the toy regressor predicts rows of {features}",
            where="eval.sample_prompts",
            fix=f"Write {features} numbers in each prompt, e.g. {', '.join(['0.5'] * features)!r}",
        )
    return numbers


@functools.cache
def _lora_mlp() -> type:
    """The toy's LoRA module class (made on first use: loraplug.testing imports no torch)."""
    import copy
    import math

    import torch

    class LoraLinear(torch.nn.Module):
        """``base(x) + dropout(x)·Aᵀ·Bᵀ·alpha/r``; B starts at zero, so training starts from the base model."""

        def __init__(self, base: torch.nn.Linear, options: ToyLoraOptions) -> None:
            super().__init__()
            self.base = base
            self.lora_A = torch.nn.Parameter(torch.empty(options.r, base.in_features))
            self.lora_B = torch.nn.Parameter(torch.zeros(base.out_features, options.r))
            torch.nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as peft starts A
            self.dropout = torch.nn.Dropout(options.dropout)
            self.scale = options.alpha / options.r
            self.enabled = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.base(x)
            if not self.enabled:
                return out
            dropped: torch.Tensor = self.dropout(x)
            return out + (dropped @ self.lora_A.T @ self.lora_B.T) * self.scale

        def merged(self) -> torch.nn.Linear:
            linear = copy.deepcopy(self.base)
            with torch.no_grad():
                linear.weight += (self.lora_B @ self.lora_A) * self.scale
            return linear

    class LoraMLP(torch.nn.Module):
        """The MLP with LoRA on :data:`TOY_LAYERS`; ``merge_and_unload`` and ``disable_adapter`` as peft names them."""

        def __init__(self, mlp: torch.nn.Sequential, options: ToyLoraOptions) -> None:
            super().__init__()
            for name in TOY_LAYERS:
                setattr(mlp, name, LoraLinear(getattr(mlp, name), options))
            self.model = mlp

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.model(x)
            return out

        def merge_and_unload(self) -> torch.nn.Sequential:
            merged = copy.deepcopy(self.model)
            for name in TOY_LAYERS:
                setattr(merged, name, getattr(self.model, name).merged())
            return merged

        @contextmanager
        def disable_adapter(self) -> Iterator[None]:
            layers = [getattr(self.model, name) for name in TOY_LAYERS]
            for layer in layers:
                layer.enabled = False
            try:
                yield
            finally:
                for layer in layers:
                    layer.enabled = True

    return LoraMLP


class ToyRegressor:
    """The toy modality's plugin: ``toy-rows`` data, the ``toy-regressor`` model, its ``lora`` adapter and
    ``toy-weights`` export."""

    @hookimpl
    def loraplug_register_kinds(self, register: Callable[[KindSpec], None]) -> None:
        options = f"{__name__}:"
        register(
            KindSpec(
                "data", "toy-rows", options + "ToyRowsOptions", "JSONL rows of numbers", produces=(TOY_ROWS,)
            )
        )
        register(
            KindSpec(
                "model",
                TOY_MODEL,
                options + "ToyRegressorOptions",
                "a small MLP (pure torch)",
                accepts=(TOY_ROWS,),
            )
        )
        register(
            KindSpec(
                "adapter",
                "lora",
                options + "ToyLoraOptions",
                "LoRA on the MLP (pure torch)",
                models=(TOY_MODEL,),
            )
        )
        register(
            KindSpec(
                "export", "toy-weights", options + "ToyWeightsOptions", "the merged MLP as safetensors",
                models=(TOY_MODEL,), adapters=("lora",),
            )
        )  # fmt: skip

    @hookimpl
    def loraplug_load_data(self, kind: str, options: ToyRowsOptions, ctx: RunContext) -> DataBundle:
        train = _toy_rows(options.path)
        val = _toy_rows(options.val_path) if options.val_path else None
        summary = {"train samples": len(train)} | ({} if val is None else {"validation samples": len(val)})
        return DataBundle(train=train, val=val, summary=summary)

    @hookimpl
    def loraplug_build_model(self, kind: str, options: ToyRegressorOptions, ctx: RunContext) -> ModelBundle:
        from collections import OrderedDict

        import torch

        torch.manual_seed(ctx.seed)
        layers = OrderedDict(
            hidden=torch.nn.Linear(options.features, options.hidden),
            act=torch.nn.Tanh(),
            out=torch.nn.Linear(options.hidden, 1),
        )
        module = torch.nn.Sequential(layers).requires_grad_(False)
        return ModelBundle(
            kind=TOY_MODEL, module=module, base=f"toy-regressor {options.features}x{options.hidden}"
        )

    @hookimpl
    def loraplug_wrap_adapter(
        self, kind: str, options: ToyLoraOptions, model: ModelBundle, ctx: RunContext
    ) -> ModelBundle:
        from dataclasses import replace

        return replace(model, module=_lora_mlp()(model.module, options))

    @hookimpl
    def loraplug_prepare_data(
        self, model: ModelBundle, options: ToyRegressorOptions, data: DataBundle, ctx: RunContext
    ) -> PreparedData:
        from loraplug.errors import LoraplugError

        for row in [*data.train, *(data.val or [])]:
            if len(row["x"]) != options.features:
                raise LoraplugError(
                    f"{row['id']} has {len(row['x'])} numbers in x; model.features is {options.features}",
                    where=row["id"],
                    fix="Make every row as long as model.features",
                )
        val = list(data.val) if data.val else None
        return PreparedData(
            train=list(data.train), collate=_toy_collate, val=val, sample_weights=data.weights, unit="rows"
        )

    @hookimpl
    def loraplug_train_step(
        self, model: ModelBundle, module: Any, batch: Batch, ctx: RunContext
    ) -> StepResult:
        prediction = module(batch.inputs["x"]).squeeze(-1)
        errors = (prediction - batch.inputs["y"]) ** 2
        return StepResult(loss_sum=(errors * batch.inputs["mask"]).sum(), num_targets=batch.num_targets)

    @hookimpl
    def loraplug_generate(
        self,
        model: ModelBundle,
        options: ToyRegressorOptions,
        prompts: list[str],
        out_dir: Path,
        ctx: RunContext,
    ) -> list[Sample]:
        import torch

        module = model.module
        rows = torch.tensor(
            [_prompt_row(prompt, options.features) for prompt in prompts], dtype=torch.float32
        )
        was_training = module.training
        module.eval()  # deterministic: no dropout
        try:
            with torch.no_grad():
                predictions = (
                    _toy_probe(module, {"rows": rows.to(next(module.parameters()).device)}).cpu().tolist()
                )
        finally:
            module.train(was_training)
        return [
            Sample(prompt, text=f"{value:.4f}") for prompt, value in zip(prompts, predictions, strict=True)
        ]

    @hookimpl
    def loraplug_deployable(self, model: ModelBundle, ctx: RunContext) -> Deployable:
        import copy
        import json

        import torch

        from loraplug.toolkit import parity_tolerance

        merged = copy.deepcopy(model.module).to("cpu", torch.float32).merge_and_unload().eval()
        features = merged.hidden.in_features
        generator = torch.Generator().manual_seed(ctx.seed)
        inputs = {"rows": torch.randn(2, features, generator=generator)}
        check_inputs = {"rows": torch.randn(5, features, generator=generator)}
        trained = model.module
        was_training = trained.training
        trained.eval()
        try:
            with torch.no_grad():
                device = next(trained.parameters()).device
                as_trained = _toy_probe(trained, {"rows": check_inputs["rows"].to(device)}).cpu()
                difference = float((_toy_probe(merged, check_inputs) - as_trained).abs().max())
        finally:
            trained.train(was_training)

        def save_beside(directory: Path) -> None:
            config = {"model": TOY_MODEL, "features": features, "hidden": merged.hidden.out_features}
            (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")

        return Deployable(
            module=merged,
            inputs=inputs,
            check_inputs=check_inputs,
            probe=_toy_probe,
            output="prediction",
            what="the merged toy regressor",
            dynamic_shapes={"rows": {0: torch.export.Dim("batch")}},
            value_name="prediction",
            save_beside=save_beside,
            batch_outputs=_toy_batch_outputs,
            score=_toy_mse,
            merge_check=MergeCheck(
                difference, parity_tolerance("float32"), {"max_abs_diff_vs_trained": difference}
            ),
            notes=[f"merged LoRA into the {', '.join(TOY_LAYERS)} layers"],
        )

    @hookimpl
    def loraplug_export(
        self, kind: str, options: ToyWeightsOptions, model: ModelBundle, out_dir: Path, ctx: RunContext
    ) -> ExportResult:
        import torch
        from safetensors.torch import save_file

        deployable = ctx.deployable(model)
        figures = deployable.verify_merge()
        dtype = getattr(torch, options.dtype)
        state = {
            name: tensor.to(dtype).contiguous() for name, tensor in deployable.module.state_dict().items()
        }
        save_file(state, str(out_dir / "model.safetensors"))
        deployable.save_files_beside(out_dir)
        if options.model_card:
            metrics = (
                "\n".join(f"- {k}: {v}" for k, v in ctx.final_metrics.items())
                or "- (see the run's metrics.jsonl)"
            )
            card = f"# LoRA merged into {model.base}\n\n## Final metrics\n\n{metrics}\n"
            (out_dir / "README.md").write_text(card, encoding="utf-8")
        return ExportResult(
            figures=figures,
            loads_with="safetensors.torch.load_file('model.safetensors') into the MLP config.json describes",
        )


def toy_plugin_dist(site: Path) -> Path:
    """Install :class:`ToyRegressor` in ``site`` as the distribution ``loraplug-toy`` (see :func:`plugin_dist`)."""
    hooks = [name for name in vars(ToyRegressor) if name.startswith("loraplug_")]
    source = f"from {__name__} import ToyRegressor\n\n_plugin = ToyRegressor()\n" + "".join(
        f"{h} = _plugin.{h}\n" for h in hooks
    )
    return plugin_dist(site, distribution=TOY_DISTRIBUTION, module="loraplug_toy", source=source)
