"""Plugin discovery and dispatch.

Discovery is our own loop over the entry points of the group ``loraplug`` rather than pluggy's
``load_setuptools_entrypoints``: one plugin that fails to import, registers a misspelt hook or breaks
in ``loraplug_register_kinds`` is recorded with its error and skipped, so it cannot take the CLI
down. ``LORAPLUG_STRICT_PLUGINS=1`` turns such a failure into an error.

First-party plugins are loaded by exactly this path too: they are separate distributions with entry
points, like anyone else's.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import pluggy

from loraplug import __version__, builtin, hookspecs
from loraplug.errors import LoraplugError, PluginError
from loraplug.kinds import DEFAULT_OBJECTIVE, STAGE_HOOKS, KindRegistry, KindSpec, Served, Stage

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from pydantic import BaseModel

    from loraplug.bundles import DataBundle, ExportResult, ModelBundle, PreparedData, Sample, StepResult
    from loraplug.captioning import CaptionContext, Captioner
    from loraplug.context import RunContext
    from loraplug.data.filters import Filter
    from loraplug.deploy import Deployable
    from loraplug.recipe.model import ExportSection, KindSection, Recipe
    from loraplug.training.sinks import MetricSink

T = TypeVar("T")

ENTRY_POINT_GROUP = "loraplug"
FIRST_PARTY_PREFIX = "loraplug-"
#: The plugins developed in this repository (plugins/), documented in docs/.
FIRST_PARTY = frozenset(
    {
        "loraplug",  # the core's built-in kinds (loraplug/builtin.py)
        "loraplug-causal-lm", "loraplug-diffusion", "loraplug-webdataset", "loraplug-onnx", "loraplug-quant",
        "loraplug-wandb", "loraplug-optimizers", "loraplug-caption", "loraplug-text-classification", "loraplug-datasets",
    }
)  # fmt: skip
#: Kinds served by first-party plugins that are installed separately: a recipe naming one without its
#: plugin is told which distribution to install instead of "unknown kind".
FIRST_PARTY_KINDS: dict[tuple[str, str], str] = {
    ("model", "stable-diffusion"): "loraplug-diffusion",
    ("model", "stable-diffusion-xl"): "loraplug-diffusion",
    ("model", "flux"): "loraplug-diffusion",
    ("data", "webdataset"): "loraplug-webdataset",
    ("export", "onnx"): "loraplug-onnx",
    ("export", "bnb-8bit"): "loraplug-quant",
    ("export", "bnb-4bit"): "loraplug-quant",
    ("export", "int8"): "loraplug-quant",
    ("optimizer", "adamw8bit"): "loraplug-optimizers",
    ("optimizer", "lion"): "loraplug-optimizers",
    ("optimizer", "prodigy"): "loraplug-optimizers",
    ("optimizer", "adafactor"): "loraplug-optimizers",
    ("caption", "wd14"): "loraplug-caption",
    ("caption", "blip"): "loraplug-caption",
    ("data", "hf-dataset"): "loraplug-datasets",
    ("model", "sequence-classifier"): "loraplug-text-classification",
    ("data", "labelled-jsonl"): "loraplug-text-classification",
    ("data", "labelled-csv"): "loraplug-text-classification",
}


@dataclass
class PluginRecord:
    """What ``loraplug plugins list`` shows about one plugin."""

    name: str
    distribution: str
    version: str
    target: str
    status: Literal["ok", "error"] = "ok"
    error: str | None = None
    hooks: list[str] = field(default_factory=list)
    kinds: list[KindSpec] = field(default_factory=list)
    plugin: object | None = None
    error_traceback: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "entry_point": self.target,
            "status": self.status,
            "error": self.error,
            "hooks": self.hooks,
            "kinds": [_kind_json(k) for k in self.kinds],
        }


@dataclass(frozen=True)
class ExtraPlugin:
    """A plugin registered in-process (tests, notebooks) instead of through an entry point."""

    plugin: object
    distribution: str
    version: str = "0"


def _kind_json(spec: KindSpec) -> dict[str, Any]:
    """A kind for ``plugins list --json``; what it declares (adapters, produces, accepts, needs, provides,
    streams, higher_is_better) only where declared."""
    out: dict[str, Any] = {
        "stage": spec.stage,
        "kind": spec.name,
        "models": list(spec.models) if spec.models else None,
        "summary": spec.summary,
    }
    for name in ("adapters", "produces", "accepts", "needs", "provides"):
        value = getattr(spec, name)
        if value is not None:
            out[name] = list(value)  # provides: [] declares "nothing", unlike an absent key
    if spec.streams:
        out["streams"] = True
    if spec.higher_is_better is not None:
        out["higher_is_better"] = spec.higher_is_better
    return out


def _trace_call(hook_name: str, hook_impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
    """``LORAPLUG_TRACE_HOOKS=1``: print each hook call and the plugins it reaches, to stderr."""
    import sys

    plugins = ", ".join(impl.plugin_name for impl in hook_impls) or "no plugin"
    print(f"[loraplug hook] {hook_name} -> {plugins}", file=sys.stderr)


def strict_from_env() -> bool:
    return os.environ.get("LORAPLUG_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes", "on"}


class PluginHost:
    """The loaded plugins, their kinds, and typed dispatch to the one plugin that serves a kind."""

    def __init__(self, pm: pluggy.PluginManager, registry: KindRegistry, records: list[PluginRecord]) -> None:
        self.pm = pm
        self.registry = registry
        self.records = records

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        *,
        strict: bool | None = None,
        extra: Iterable[ExtraPlugin] = (),
        entry_points: bool = True,
    ) -> PluginHost:
        """Discover and register every plugin.

        :param strict: fail on the first broken plugin (default: ``LORAPLUG_STRICT_PLUGINS``).
        :param extra: plugins to register in-process, after the entry points.
        :param entry_points: discover installed plugins (off for fully isolated tests).
        """
        strict = strict_from_env() if strict is None else strict
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        if os.environ.get("LORAPLUG_TRACE_HOOKS", "") not in ("", "0"):
            pm.add_hookcall_monitoring(_trace_call, lambda *args: None)
        host = cls(pm, KindRegistry(FIRST_PARTY_KINDS), [])
        # The core's own kinds (adamw, the [data.clean] filters) first, through the same path as any plugin.
        core = PluginRecord(
            name=builtin.NAME, distribution=builtin.DISTRIBUTION, version=__version__, target=builtin.__name__
        )
        host.records.append(core)
        host._register(core, builtin)
        if entry_points:
            for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
                dist = ep.dist
                record = PluginRecord(
                    name=ep.name,
                    distribution=dist.name if dist else "?",
                    version=dist.version if dist else "?",
                    target=ep.value,
                )
                host.records.append(record)
                try:
                    host._register(record, ep.load())
                except Exception as exc:  # noqa: BLE001 — any failure of a plugin is recorded, not fatal
                    host._fail(record, exc, strict)
        for item in extra:
            record = PluginRecord(
                name=item.distribution.removeprefix(FIRST_PARTY_PREFIX),
                distribution=item.distribution,
                version=item.version,
                target=repr(item.plugin),
            )
            host.records.append(record)
            try:
                host._register(record, item.plugin)
            except Exception as exc:  # noqa: BLE001
                host._fail(record, exc, strict)
        return host

    def _register(self, record: PluginRecord, plugin: object) -> None:
        if self.pm.is_registered(plugin):
            raise PluginError(f"Entry point {record.name!r} points at a plugin that is already registered")
        self.pm.register(plugin, name=f"{record.distribution}:{record.name}")
        record.plugin = plugin
        unknown = [
            impl.function.__name__
            for caller in self.pm.get_hookcallers(plugin) or []
            for impl in caller.get_hookimpls()
            if impl.plugin is plugin and caller.spec is None
        ]
        if unknown:
            from difflib import get_close_matches

            valid = [name for name in dir(hookspecs) if name.startswith("loraplug_")]
            hints = []
            for name in unknown:
                close = get_close_matches(name, valid, n=1)
                hints.append(f"{name}" + (f" (did you mean {close[0]}?)" if close else ""))
            raise PluginError(f"it implements unknown hooks: {', '.join(hints)}")
        record.hooks = sorted({c.name for c in self.pm.get_hookcallers(plugin) or []})

        declared: list[KindSpec] = []

        def register(spec: KindSpec) -> None:
            if not isinstance(spec, KindSpec):
                raise PluginError(f"register() takes a loraplug.KindSpec, got {type(spec).__name__}")
            declared.append(spec)

        others = [p for p in self.pm.get_plugins() if p is not plugin]
        self.pm.subset_hook_caller("loraplug_register_kinds", remove_plugins=others)(register=register)
        for spec in declared:
            self.registry.check(spec, record.distribution)
        for spec in declared:
            self.registry.add(spec, plugin, record.distribution)
        record.kinds = declared

    def _fail(self, record: PluginRecord, exc: BaseException, strict: bool) -> None:
        record.status = "error"
        record.error = exc.what if isinstance(exc, LoraplugError) else f"{type(exc).__name__}: {exc}"
        if record.plugin is not None and self.pm.is_registered(record.plugin):
            self.pm.unregister(record.plugin)
        record.plugin = None
        if strict:
            raise PluginError(
                f"Plugin {record.name!r} from {record.distribution} {record.version} failed to load: {record.error}",
                fix="Fix or uninstall it, or unset LORAPLUG_STRICT_PLUGINS to skip broken plugins",
            ) from exc
        record.error_traceback = "".join(traceback.format_exception(exc))

    def broken(self) -> list[PluginRecord]:
        return [r for r in self.records if r.status == "error"]

    def warn_broken(self, warn: Callable[[str], None]) -> None:
        """Tell ``warn`` about each plugin that failed to load and is skipped (commands warn before they work)."""
        for record in self.broken():
            warn(
                f"plugin {record.name} ({record.distribution} {record.version}) failed to load and is skipped: "
                f"{record.error} (`loraplug plugins list` shows it)"
            )

    # -- dispatch --------------------------------------------------------------------------------

    def lookup(self, stage: Stage, kind: str, model_kind: str | None = None) -> Served:
        return self.registry.lookup(stage, kind, model_kind)

    def call_stage(self, stage: Stage, kind: str, model_kind: str | None = None, **kwargs: Any) -> Any:
        """Call the stage hook of the one plugin serving ``kind``."""
        served = self.lookup(stage, kind, model_kind)
        return self.call_on(served, STAGE_HOOKS[stage], kind=kind, **kwargs)

    def call_model_hook(self, hook_name: str, model_kind: str, **kwargs: Any) -> Any:
        """Call a model hook (``prepare_data``, ``train_step``, ``generate``) on the model's plugin."""
        return self.call_on(self.lookup("model", model_kind), hook_name, **kwargs)

    def call_on(self, served: Served, hook_name: str, **kwargs: Any) -> Any:
        return self.bind(served, hook_name)(**kwargs)

    def bound_model_hook(self, hook_name: str, model_kind: str) -> Callable[..., Any]:
        """A model hook bound once to its plugin, for calls in the training loop's hot path."""
        return self.bind(self.lookup("model", model_kind), hook_name)

    def bind(self, served: Served, hook_name: str) -> Callable[..., Any]:
        """A callable that calls ``hook_name`` on ``served``'s plugin alone and checks its answer."""
        others = [p for p in self.pm.get_plugins() if p is not served.plugin]
        caller = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
        if not any(impl.plugin is served.plugin for impl in caller.get_hookimpls()):
            raise PluginError(
                f"{served.distribution} declares {served.spec.label()} but does not implement {hook_name}",
                fix=f"This is a bug in {served.distribution}; report it to its authors",
            )

        def call(**kwargs: Any) -> Any:
            try:
                results = caller(**kwargs)
            except LoraplugError:
                raise
            except Exception as exc:
                raise PluginCrash(served.distribution, hook_name, exc) from exc
            result = next((r for r in results if r is not None), None)
            if result is None:
                raise PluginError(
                    f"{served.distribution} returned nothing from {hook_name} for {served.spec.label()}",
                    fix=f"This is a bug in {served.distribution}; report it to its authors",
                )
            return result

        return call

    def broadcast(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call a hook on every plugin that implements it."""
        return list(getattr(self.pm.hook, hook_name)(**kwargs))

    def call_typed(self, served: Served, hook_name: str, returns: type[T], **kwargs: Any) -> T:
        """Call ``hook_name`` on ``served``'s plugin; an answer that is not a ``returns`` is a :class:`PluginError`."""
        return _checked(self.call_on(served, hook_name, **kwargs), returns, served, hook_name)

    # -- the typed facade: one method per hook a run calls ---------------------------------------
    # As tox's typed hook wrappers: each answer is checked once, here, against the type the hookspec
    # promises, and a wrong one is an error naming the plugin. Callers get a DataBundle, never Any.

    def load_data(self, recipe: Recipe, ctx: RunContext) -> DataBundle:
        """``[data]``'s records, from the plugin serving ``data.kind`` (``loraplug_load_data``)."""
        from loraplug.bundles import DataBundle

        section = recipe.data
        served = self.lookup("data", section.kind, recipe.model.kind)
        return self.call_typed(
            served, STAGE_HOOKS["data"], DataBundle, kind=section.kind, options=section.options, ctx=ctx
        )

    def build_filter(self, kind: str, options: BaseModel, model_kind: str, ctx: RunContext) -> Filter:
        """One cleaning filter of ``kind`` (``loraplug_build_filter``): an object with ``reason(record)``."""
        hook = "loraplug_build_filter"
        served = self.lookup("filter", kind, model_kind)
        made: Filter = self.call_on(served, hook, kind=kind, options=options, ctx=ctx)
        if not callable(getattr(made, "reason", None)):
            raise _wrong_type(made, "a filter with a reason(record) method", served, hook)
        return made

    def build_model(self, recipe: Recipe, ctx: RunContext) -> ModelBundle:
        """The base model of ``[model]`` (``loraplug_build_model``)."""
        from loraplug.bundles import ModelBundle

        section = recipe.model
        served = self.lookup("model", section.kind)
        return self.call_typed(
            served, STAGE_HOOKS["model"], ModelBundle, kind=section.kind, options=section.options, ctx=ctx
        )

    def wrap_adapter(self, recipe: Recipe, model: ModelBundle, ctx: RunContext) -> ModelBundle:
        """``model`` with ``[adapter]`` attached (``loraplug_wrap_adapter``)."""
        from loraplug.bundles import ModelBundle

        section = recipe.adapter
        served = self.lookup("adapter", section.kind, recipe.model.kind)
        return self.call_typed(
            served,
            STAGE_HOOKS["adapter"],
            ModelBundle,
            kind=section.kind,
            options=section.options,
            model=model,
            ctx=ctx,
        )

    def prepare_data(
        self, recipe: Recipe, model: ModelBundle, data: DataBundle, ctx: RunContext
    ) -> PreparedData:
        """Records encoded for ``model`` by its plugin (``loraplug_prepare_data``)."""
        from loraplug.bundles import PreparedData

        served = self.lookup("model", recipe.model.kind)
        return self.call_typed(
            served,
            "loraplug_prepare_data",
            PreparedData,
            model=model,
            options=recipe.model.options,
            data=data,
            ctx=ctx,
        )

    def train_step(self, model_kind: str, objective: Served | None = None) -> Callable[..., StepResult]:
        """``loraplug_train_step`` bound once, for the training loop's hot path: to the plugin serving
        ``objective`` (``train.objective``), or to the model's plugin for the default ``sft`` (its own loss).

        Each call's answer is checked to be a :class:`~loraplug.StepResult` (an ``isinstance``, nothing
        a forward pass would notice).
        """
        from loraplug.bundles import StepResult

        own_loss = objective is None or objective.spec.name == DEFAULT_OBJECTIVE
        served = self.lookup("model", model_kind) if own_loss else objective
        assert served is not None  # noqa: S101 — for mypy: objective is set when it is not the model's own loss
        call = self.bind(served, "loraplug_train_step")

        def step(**kwargs: Any) -> StepResult:
            return _checked(call(**kwargs), StepResult, served, "loraplug_train_step")

        return step

    def build_optimizer(
        self, recipe: Recipe, param_groups: list[dict[str, Any]], ctx: RunContext
    ) -> torch.optim.Optimizer:
        """The optimizer of ``train.optimizer`` over ``param_groups`` (``loraplug_build_optimizer``)."""
        import torch

        section = recipe.optimizer
        return self.call_typed(
            section.served, "loraplug_build_optimizer", torch.optim.Optimizer, kind=section.kind,
            options=section.options, param_groups=param_groups, ctx=ctx,
        )  # fmt: skip

    def evaluate(
        self,
        served: Served,
        *,
        metrics: list[str],
        model: ModelBundle,
        options: BaseModel,
        data: DataBundle,
        scores: dict[str, float],
        ctx: RunContext,
    ) -> dict[str, float]:
        """The scores of ``metrics``, all declared by ``served``'s plugin (``loraplug_evaluate``): a dict of
        metric name to number, each value a ``float`` here (numpy's and ints too; a tensor or text is refused)."""
        import numbers

        hook = "loraplug_evaluate"
        answer = self.call_on(
            served, hook, metrics=metrics, model=model, options=options, data=data, scores=scores, ctx=ctx
        )
        if not isinstance(answer, Mapping) or not all(isinstance(name, str) for name in answer):
            raise _wrong_type(answer, "a dict of metric name to number", served, hook)
        for name, value in answer.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise PluginError(
                    f"{served.distribution} returned {name} = {value!r} ({type(value).__name__}) from {hook}, "
                    "expected a number",
                    fix=f"This is a bug in {served.distribution}",
                )
        return {name: float(value) for name, value in answer.items()}

    def generate(
        self, recipe: Recipe, model: ModelBundle, prompts: list[str], out_dir: Path, ctx: RunContext
    ) -> list[Sample]:
        """Samples for ``prompts`` from ``model`` (``loraplug_generate``): a list of :class:`~loraplug.Sample`."""
        from loraplug.bundles import Sample

        served = self.lookup("model", model.kind)
        answer = self.call_on(
            served,
            "loraplug_generate",
            model=model,
            options=recipe.model.options,
            prompts=prompts,
            out_dir=out_dir,
            ctx=ctx,
        )
        if not isinstance(answer, list | tuple) or not all(isinstance(sample, Sample) for sample in answer):
            raise _wrong_type(answer, "a list of Sample", served, "loraplug_generate")
        return list(answer)

    def export(
        self, section: ExportSection, recipe: Recipe, model: ModelBundle, out_dir: Path, ctx: RunContext
    ) -> ExportResult:
        """One ``[[export]]`` written into ``out_dir`` (``loraplug_export``); ``ctx.deployable(model)``
        answers from the model's plugin (:meth:`deployable`), once per run."""
        from dataclasses import replace

        from loraplug.bundles import ExportResult

        served = self.lookup("export", section.kind, recipe.model.kind)
        if ctx.load_deployable is None:
            ctx = replace(ctx, load_deployable=lambda bundle: self.deployable(bundle, ctx))
        return self.call_typed(
            served, STAGE_HOOKS["export"], ExportResult, kind=section.kind, options=section.options, model=model,
            out_dir=out_dir, ctx=ctx,
        )  # fmt: skip

    def deployable(self, model: ModelBundle, ctx: RunContext) -> Deployable:
        """``model`` as one deployable module, from the plugin serving ``model.kind`` (``loraplug_deployable``).

        Exporters reach it through ``ctx.deployable(model)``, which keeps the answer for the run.
        """
        from loraplug.deploy import Deployable

        served = self.lookup("model", model.kind)
        hook = "loraplug_deployable"
        if not any(impl.plugin is served.plugin for impl in getattr(self.pm.hook, hook).get_hookimpls()):
            raise LoraplugError(
                f"The model kind {model.kind!r} ({served.distribution}) hands exporters no deployable model "
                f"(its plugin does not implement {hook}), so this export cannot write it",
                fix=f"Remove this export, or ask the authors of {served.distribution} to implement {hook}",
            )
        return self.call_typed(served, hook, Deployable, model=model, ctx=ctx)

    def metric_sinks(self, ctx: RunContext) -> list[MetricSink]:
        """The sinks plugins add to a run (``loraplug_metric_sinks``, broadcast); plugins that stay out answer ``None``."""
        return [sink for sink in self.broadcast("loraplug_metric_sinks", ctx=ctx) if sink is not None]

    def build_captioner(self, section: KindSection, ctx: CaptionContext) -> Captioner:
        """The captioner of a checked caption kind (``loraplug_build_captioner``): an object with
        ``caption(images)`` (:class:`loraplug.captioning.Captioner`); :func:`loraplug.captioning.caption_options`
        checks the kind and its options into ``section``."""
        hook = STAGE_HOOKS["caption"]
        made = self.call_on(section.served, hook, kind=section.kind, options=section.options, ctx=ctx)
        if not callable(getattr(made, "caption", None)):
            raise _wrong_type(made, "a captioner with a caption(images) method", section.served, hook)
        captioner: Captioner = made
        return captioner


def _checked(value: Any, expected: type[T], served: Served, hook: str) -> T:
    if not isinstance(value, expected):
        raise _wrong_type(value, expected.__name__, served, hook)
    return value


def _wrong_type(value: Any, expected: str, served: Served, hook: str) -> PluginError:
    return PluginError(
        f"{served.distribution} returned {type(value).__name__} from {hook}, expected {expected}",
        fix=f"This is a bug in {served.distribution}",
    )


#: The process's plugins once :func:`load_plugins` has loaded them (tests may set another host here).
_loaded: PluginHost | None = None


def load_plugins() -> PluginHost:
    """The installed plugins, discovered and registered once per process: ``loraplug.load_plugins()``.

    The CLI and plugins' own commands use this one host; a broken plugin is recorded and skipped
    (:meth:`PluginHost.broken`, :meth:`PluginHost.warn_broken`), unless ``LORAPLUG_STRICT_PLUGINS=1``.
    For a host of your own (extra in-process plugins, no entry points) call :meth:`PluginHost.load`.
    """
    global _loaded
    if _loaded is None:
        _loaded = PluginHost.load()
    return _loaded


class PluginCrash(LoraplugError):
    """An unexpected exception inside a plugin's hook: a bug, reported with the plugin's name."""

    exit_code = 1

    def __init__(self, distribution: str, hook: str, exc: BaseException) -> None:
        super().__init__(
            f"{distribution} failed in {hook}: {type(exc).__name__}: {exc}",
            fix="Run again with --debug for the traceback; if it is not caused by your recipe or data, "
            f"report it to the authors of {distribution}",
        )
