"""Helpers for testing loraplug and its plugins — first-party or third-party — with pytest.

``run_cli`` runs the real CLI in-process and captures what a user would see; ``write_recipe`` writes a
recipe file from Python dicts; ``plugin_dist`` installs a plugin module as a real distribution with an
entry point (a ``.dist-info`` directory on ``sys.path``), so discovery is tested exactly as it happens
after ``pip install``. ``ToyRegressor`` is a whole modality to test against — rows of numbers, a small
MLP, its LoRA and its deployable view — in pure torch and peft (``toy_plugin_dist`` installs it).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import Field

from loraplug.bundles import Batch, DataBundle, ModelBundle, PreparedData, StepResult
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

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        cli_main.console.file = out
        cli_main.err_console.file = err
        try:
            code = cli_main.main([str(a) for a in args])
        finally:
            cli_main.console.file = None  # type: ignore[assignment]
            cli_main.err_console.file = None  # type: ignore[assignment]
    return CliResult(code, out.getvalue(), err.getvalue())


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
        raise TypeError("plugin_dist takes one of source= (a module's text) or package= (a package directory)")
    site.mkdir(parents=True, exist_ok=True)
    if package is not None:
        import shutil

        shutil.copytree(package, site / module, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    else:
        assert source is not None  # noqa: S101 — checked above
        (site / f"{module}.py").write_text(source, encoding="utf-8")
    info = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[loraplug]\n{module} = {module}\n", encoding="utf-8")
    return site




# -- a toy modality: the plugin contract with nothing but torch and peft ------------------------------
# Neither text nor image: rows of numbers regressed by a small MLP. It serves a data kind, a model kind
# (with its deployable view, so exporters of any modality export it) and a `lora` adapter, in about a
# hundred lines, and trains in a second. Register it in-process with
# `PluginHost.load(extra=[ExtraPlugin(ToyRegressor(), TOY_DISTRIBUTION)])`, or installed, for the CLI,
# with `toy_plugin_dist(site)`.

TOY_DISTRIBUTION = "loraplug-toy"
TOY_MODEL = "toy-regressor"
#: The record shape the toy data kind produces and the toy model trains on.
TOY_ROWS = "number-rows"
#: The MLP's linear layers, by name: what the `lora` adapter adapts.
TOY_LAYERS = ("hidden", "out")


class ToyRowsOptions(Options):
    """``[data] kind = "toy-rows"``: JSONL of ``{"x": [numbers], "y": number}``."""

    path: InputFile
    val_path: InputFile | None = None


class ToyRegressorOptions(Options):
    """``[model] kind = "toy-regressor"``: an MLP ``features → hidden → 1``, initialised from ``run.seed``."""

    features: int = Field(ge=1, le=1024)
    hidden: int = Field(16, ge=1, le=1024)


class ToyLoraOptions(Options):
    """``[adapter] kind = "lora"`` for the toy regressor: peft LoRA on its linear layers."""

    r: int = Field(4, ge=1, le=256)
    alpha: float = Field(8.0, gt=0, le=1024)


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
            rows.append({"id": where, "x": [float(v) for v in row["x"]], "y": float(row["y"])})
        except (ValueError, KeyError, TypeError) as exc:
            raise LoraplugError(f"{where} is not a row of numbers ({exc})", where=where, fix='Write {"x": [1.0, 2.0], "y": 3.0}') from exc
    return rows


def _toy_collate(rows: list[dict[str, Any]]) -> Batch:
    import torch

    x = torch.tensor([row["x"] for row in rows], dtype=torch.float32)
    y = torch.tensor([row["y"] for row in rows], dtype=torch.float32)
    return Batch(inputs={"x": x, "y": y}, num_targets=len(rows), num_tokens=len(rows), sample_ids=[r["id"] for r in rows])


def _toy_probe(module: Any, inputs: dict[str, Any]) -> Any:
    return module(inputs["rows"]).squeeze(-1).float()


def _toy_batch_outputs(module: Any, batch: Batch) -> Any:
    import torch

    with torch.no_grad():
        return _toy_probe(module, {"rows": batch.inputs["x"].to(next(module.parameters()).device)}).cpu()


def _toy_mse(module: Any, batches: Any) -> dict[str, float]:
    total, count = 0.0, 0
    for batch in batches:
        total += float(((_toy_batch_outputs(module, batch) - batch.inputs["y"]) ** 2).sum())
        count += batch.num_targets
    return {"mse": total / max(count, 1)}


class ToyRegressor:
    """The toy modality's plugin: ``toy-rows`` data, the ``toy-regressor`` model, its ``lora`` adapter."""

    @hookimpl
    def loraplug_register_kinds(self, register: Callable[[KindSpec], None]) -> None:
        options = f"{__name__}:"
        register(KindSpec("data", "toy-rows", options + "ToyRowsOptions", "JSONL rows of numbers", produces=TOY_ROWS))
        register(KindSpec("model", TOY_MODEL, options + "ToyRegressorOptions", "a small MLP (pure torch)", accepts=TOY_ROWS))
        register(KindSpec("adapter", "lora", options + "ToyLoraOptions", "peft LoRA on the MLP", models=(TOY_MODEL,)))

    @hookimpl
    def loraplug_load_data(self, kind: str, options: ToyRowsOptions, ctx: RunContext) -> DataBundle:
        val = _toy_rows(options.val_path) if options.val_path else None
        return DataBundle(train=_toy_rows(options.path), val=val)

    @hookimpl
    def loraplug_build_model(self, kind: str, options: ToyRegressorOptions, ctx: RunContext) -> ModelBundle:
        from collections import OrderedDict

        import torch

        torch.manual_seed(ctx.seed)
        layers = OrderedDict(
            hidden=torch.nn.Linear(options.features, options.hidden), act=torch.nn.Tanh(), out=torch.nn.Linear(options.hidden, 1)
        )
        module = torch.nn.Sequential(layers).requires_grad_(False)
        return ModelBundle(kind=TOY_MODEL, module=module, base=f"toy-regressor {options.features}x{options.hidden}")

    @hookimpl
    def loraplug_wrap_adapter(self, kind: str, options: ToyLoraOptions, model: ModelBundle, ctx: RunContext) -> ModelBundle:
        from dataclasses import replace

        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=options.r, lora_alpha=options.alpha, target_modules=list(TOY_LAYERS))
        return replace(model, module=get_peft_model(model.module, config))

    @hookimpl
    def loraplug_prepare_data(self, model: ModelBundle, options: ToyRegressorOptions, data: DataBundle, ctx: RunContext) -> PreparedData:
        from loraplug.errors import LoraplugError

        for row in [*data.train, *(data.val or [])]:
            if len(row["x"]) != options.features:
                raise LoraplugError(
                    f"{row['id']} has {len(row['x'])} numbers in x; model.features is {options.features}",
                    where=row["id"],
                    fix="Make every row as long as model.features",
                )
        return PreparedData(train=list(data.train), collate=_toy_collate, val=list(data.val) if data.val else None, unit="rows")

    @hookimpl
    def loraplug_train_step(self, model: ModelBundle, module: Any, batch: Batch, ctx: RunContext) -> StepResult:
        prediction = module(batch.inputs["x"]).squeeze(-1)
        return StepResult(loss_sum=((prediction - batch.inputs["y"]) ** 2).sum(), num_targets=batch.num_targets)

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
            merge_check=MergeCheck(difference, parity_tolerance("float32"), {"max_abs_diff_vs_trained": difference}),
            notes=[f"merged LoRA into the {', '.join(TOY_LAYERS)} layers"],
        )


def toy_plugin_dist(site: Path) -> Path:
    """Install :class:`ToyRegressor` in ``site`` as the distribution ``loraplug-toy`` (see :func:`plugin_dist`)."""
    hooks = [name for name in vars(ToyRegressor) if name.startswith("loraplug_")]
    source = f"from {__name__} import ToyRegressor\n\n_plugin = ToyRegressor()\n" + "".join(f"{h} = _plugin.{h}\n" for h in hooks)
    return plugin_dist(site, distribution=TOY_DISTRIBUTION, module="loraplug_toy", source=source)
