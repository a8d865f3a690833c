"""The kinds plugins serve, and the registry that picks exactly one plugin per kind.

A recipe section's ``kind`` names what to use: ``[data] kind = "jsonl"``. Plugins declare the kinds
they serve in :func:`~loraplug.hookspecs.loraplug_register_kinds` — cheaply, with a pydantic options
model per kind and no heavy import — and the registry answers "which plugin serves this?".

Adapter and export kinds are looked up per model kind: ``merged`` means one thing for a causal LM and
another for Stable Diffusion, so each plugin says which model kinds its adapter or export works with.
Two plugins serving the same kind for the same model kind is an error naming both; nothing is ever
chosen silently.

Kinds also declare what they fit, so ``recipe check`` refuses a mismatch before anything loads: an
export the adapter kinds it handles (``adapters``) and what it needs of the model (``needs``), a data
kind the record shapes it produces (``produces``), a model kind the shapes it trains on (``accepts``) and
what its deployable view offers (``provides``), a filter kind the shapes it can read (``accepts``).
Undeclared (``None``) is never checked — except an export's need of a ``deployable`` view, which is
found from the model's plugin itself (whether it implements ``loraplug_deployable``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from loraplug.errors import PluginError

if TYPE_CHECKING:
    from pathlib import Path

    from pydantic import BaseModel

Stage = Literal["data", "filter", "model", "adapter", "optimizer", "objective", "export", "metric", "caption"]
STAGES: tuple[Stage, ...] = (
    "data", "filter", "model", "adapter", "optimizer", "objective", "export", "metric", "caption",
)  # fmt: skip

#: The hook each stage's kind is dispatched to.
STAGE_HOOKS: dict[Stage, str] = {
    "data": "loraplug_load_data",
    "filter": "loraplug_build_filter",
    "model": "loraplug_build_model",
    "adapter": "loraplug_wrap_adapter",
    "optimizer": "loraplug_build_optimizer",
    # An objective is a loss: its plugin's train_step computes it (the default, sft, is the model's own).
    "objective": "loraplug_train_step",
    "export": "loraplug_export",
    "metric": "loraplug_evaluate",
    # Not a stage of a run: `loraplug data caption` and the studio caption image folders with it.
    "caption": "loraplug_build_captioner",
}


#: ``train.objective`` when a recipe names none: the model kind's own loss, computed by the model's plugin.
DEFAULT_OBJECTIVE = "sft"

#: The record shapes first-party kinds declare (``KindSpec.produces`` / ``accepts``), and what such a
#: record holds. A plugin may name a shape of its own; two kinds fit when they name the same one.
RECORD_SHAPES: dict[str, str] = {
    "chat": 'text as chat turns: {"id", "messages": [{"role", "content"}, ...]} (prompt/response pairs become two turns)',
    "preference": '{"id", "messages": the prompt turns then the chosen assistant turn(s), "rejected": the rejected '
    "assistant turn(s)}: a preference pair, for objectives such as dpo and orpo",
    "caption-image": '{"id", "image": a path or PIL image, "caption": str}',
    "labelled-text": '{"id", "text": str, "label": str or int}: one label per text, for classifiers',
}

#: What an export kind may need of the model kind it exports (``KindSpec.needs``), as a user reads it.
#: ``deployable`` is found from the model's plugin (it implements ``loraplug_deployable``); any other
#: need is met when the model kind names it in ``KindSpec.provides``.
DEPLOYABLE = "deployable"
EXPORT_NEEDS: dict[str, str] = {
    DEPLOYABLE: "the model as one deployable module",
    "from_pretrained": "a model saved with save_pretrained and loaded back with from_pretrained (a transformers model)",
}

#: What each stage may declare besides ``models``: the field, and the stages that declare it.
_DECLARED_AT: dict[str, tuple[Stage, ...]] = {
    "adapters": ("export",),
    "produces": ("data",),
    "accepts": ("model", "filter", "objective"),
    "needs": ("export",),
    "provides": ("model",),
}
#: The fields an empty tuple is a declaration for ("nothing"), not a mistake.
_MAY_BE_EMPTY = ("provides",)
_EXAMPLE_NAME = {"adapters": "lora", "needs": DEPLOYABLE, "provides": "from_pretrained"}


def _joined(names: tuple[str, ...]) -> str:
    """``model, filter and objective``."""
    return " and ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} and {names[-1]}"


@dataclass(frozen=True)
class KindSpec:
    """One kind a plugin serves.

    :param stage: where it is chosen: the ``data``, ``model``, ``adapter`` or ``export`` section's
        ``kind``; ``optimizer``: ``train.optimizer`` (its options are the ``[optimizer]`` table);
        ``filter``: a ``[[data.clean.filters]]`` table's ``kind``; ``metric``: a name in ``eval.metrics``;
        ``objective``: ``train.objective`` (its options are the ``[objective]`` table; its plugin's
        ``loraplug_train_step`` computes the loss — :data:`DEFAULT_OBJECTIVE` is the model's own);
        ``caption``: ``loraplug data caption --kind`` and the studio, never a recipe (its options are the
        ``--option`` pairs; its plugin implements ``loraplug_build_captioner``).
    :param name: the value of ``kind`` in that section.
    :param options: a pydantic model for the rest of the section, subclassing :class:`loraplug.Options`
        (which forbids unknown keys) — or, better, its import path ``"package.module:ClassName"``, so
        the model is imported only when a recipe is checked and ``loraplug --help`` stays instant.
    :param summary: one line for ``loraplug plugins list`` and error messages.
    :param models: for adapter and export kinds, the model kinds it works with (``None``: any).
    :param smoke: option overrides ``--smoke`` applies to a model kind, e.g.
        ``{"pretrained": "tiny-llama"}`` — or, when they depend on the recipe, the import path
        ``"package.module:function"`` of a function ``(table, base_dir) -> (overrides, note)``: it gets
        the recipe's ``[model]`` table as written (overrides applied) and the recipe's directory, must be
        cheap (no model loads; recipe checks call it), and returns the overrides and ``None`` or a line
        the user is shown as a warning (say what ``--smoke`` could not do). See :meth:`smoke_overrides`.
    :param streams: for data kinds whose training records are a stream of unknown length: a recipe
        must then give ``train.max_steps``, checked with the rest of the recipe. A kind that streams only
        with some options leaves it ``False`` and gives its options model a method ``streams(self) -> bool``.
    :param adapters: for export kinds, the adapter kinds it handles (``None``: any). ``recipe check``
        refuses an export of an adapter kind it does not name.
    :param produces: for data kinds, the record shapes it produces (:data:`RECORD_SHAPES` names the
        well-known ones; more than one when an option picks, and then its options model may narrow them
        with a method ``produces(self) -> tuple[str, ...]``, which ``recipe check`` consults). ``None``:
        undeclared, never checked.
    :param accepts: for model kinds, the record shapes it trains on (``None``: undeclared, never
        checked). ``recipe check`` refuses a data kind that produces none of them. For filter kinds, the
        record shapes it can read (an image filter: ``caption-image``); ``recipe check`` refuses it on a
        data kind that produces none of them. For objective kinds, the record shapes its loss reads (dpo:
        ``preference``); ``recipe check`` refuses a data kind that produces none of them.
    :param needs: for export kinds, what it needs of the model kind (:data:`EXPORT_NEEDS`):
        ``"deployable"`` — the model's plugin implements ``loraplug_deployable`` (found from the plugin,
        never declared by it); ``"from_pretrained"`` (or a name of your own) — the model kind names it
        in ``provides``. ``recipe check`` and ``loraplug export --kind`` refuse a model kind that lacks one.
    :param provides: for model kinds, what its deployable view offers besides the module:
        ``"from_pretrained"`` when ``Deployable.from_pretrained`` is set (the module is saved with
        ``save_pretrained``). ``()`` declares "nothing more"; ``None`` is undeclared, never checked.
    :param higher_is_better: for metric kinds, required: whether a higher score is better (``bleu``) or a
        lower one (``perplexity``). It picks the best checkpoint and drives early stopping when the
        metric is ``eval.monitor``; nothing is guessed from the name.

    ``adapters``, ``produces``, ``accepts``, ``needs`` and ``provides`` take a tuple of names, or one name as a string.
    """

    stage: Stage
    name: str
    options: type[BaseModel] | str
    summary: str = ""
    models: tuple[str, ...] | None = None
    smoke: Mapping[str, Any] | str = field(default_factory=dict)
    streams: bool = False
    adapters: tuple[str, ...] | None = None
    produces: tuple[str, ...] | None = None
    accepts: tuple[str, ...] | None = None
    higher_is_better: bool | None = None
    needs: tuple[str, ...] | None = None
    provides: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # One name as a plain string is a tuple of one, not of its characters.
        for name in ("models", "adapters", "produces", "accepts", "needs", "provides"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            elif isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    def options_model(self) -> type[BaseModel]:
        """The options model, imported now if it was declared by its import path."""
        if not isinstance(self.options, str):
            return self.options
        module, _, name = self.options.partition(":")
        try:
            model: type[BaseModel] = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise PluginError(
                f"The options of {self.label()} ({self.options!r}) cannot be imported: {exc}",
                fix="This is a bug in the plugin that declared the kind; report it to its authors",
            ) from exc
        return model

    def smoke_overrides(self, table: Mapping[str, Any], base_dir: Path) -> tuple[dict[str, Any], str | None]:
        """What ``--smoke`` sets in the ``[model]`` table ``table`` of a recipe in ``base_dir``, and a note for
        the user (``None``: nothing to say): ``smoke`` itself, or what its function returns."""
        if not isinstance(self.smoke, str):
            return dict(self.smoke), None
        module, _, name = self.smoke.partition(":")
        try:
            function = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise PluginError(
                f"The --smoke function of {self.label()} ({self.smoke!r}) cannot be imported: {exc}",
                fix="This is a bug in the plugin that declared the kind; report it to its authors",
            ) from exc
        overrides, note = function(table, base_dir)
        return dict(overrides), note

    def serves_model(self, model_kind: str | None) -> bool:
        return self.models is None or model_kind is None or model_kind in self.models

    def handles_adapter(self, adapter_kind: str | None) -> bool:
        """Whether this export kind handles ``adapter_kind`` (undeclared or unknown: assumed so)."""
        return self.adapters is None or adapter_kind is None or adapter_kind in self.adapters

    def fits_shapes(self, accepted: tuple[str, ...] | None) -> bool:
        """Whether this data kind produces a record shape a model accepting ``accepted`` trains on."""
        return self.produces is None or accepted is None or bool(set(self.produces) & set(accepted))

    def unmet_needs(self, model: KindSpec, *, deployable: bool) -> tuple[str, ...]:
        """What this export kind needs that the model kind ``model`` lacks.

        :param deployable: whether the plugin serving ``model`` implements ``loraplug_deployable``.
        """
        unmet = []
        for need in self.needs or ():
            if need == DEPLOYABLE:
                if not deployable:
                    unmet.append(need)
            elif model.provides is not None and need not in model.provides:
                unmet.append(need)  # an undeclared model kind is never refused
        return tuple(unmet)

    def label(self) -> str:
        scope = "" if self.models is None else f" (for {', '.join(self.models)})"
        return f"{self.stage}:{self.name}{scope}"


def declarations(spec: KindSpec, separator: str = " ") -> list[str]:
    """What ``spec`` declares besides its model kinds, only where declared, as ``plugins list`` and
    ``recipe keys`` show it: ``produces chat``, ``needs deployable``, ``provides nothing`` (``()``),
    ``streams``, ``higher is better``; ``separator`` goes between a field's name and its values."""
    shown = [
        f"{name}{separator}{', '.join(value) or 'nothing'}"
        for name in ("produces", "accepts", "adapters", "needs", "provides")
        if (value := getattr(spec, name)) is not None
    ]
    if spec.streams:
        shown.append("streams")
    if spec.higher_is_better is not None:
        shown.append(f"{'higher' if spec.higher_is_better else 'lower'} is better")
    return shown


@dataclass(frozen=True)
class Served:
    """A kind together with the plugin that declared it."""

    spec: KindSpec
    plugin: object
    distribution: str


class KindRegistry:
    """Every kind every loaded plugin serves, with conflict detection.

    :param install_hints: the distribution that provides a kind which may not be installed, by
        ``(stage, kind)``: a recipe naming such a kind is told what to ``pip install``.
    """

    def __init__(self, install_hints: Mapping[tuple[str, str], str] | None = None) -> None:
        self._served: list[Served] = []
        self._install_hints = dict(install_hints or {})

    def check(self, spec: KindSpec, distribution: str) -> None:
        """Refuse a malformed declaration before anything of the plugin is registered."""
        if spec.stage not in STAGES:
            raise PluginError(
                f"Plugin {distribution} declared kind {spec.name!r} for an unknown stage {spec.stage!r}",
                fix=f"Use one of {', '.join(STAGES)}",
            )
        for name, stages in _DECLARED_AT.items():
            value = getattr(spec, name)
            if value is None:
                continue
            if spec.stage not in stages:
                raise PluginError(
                    f"Plugin {distribution} declared `{name}` on {spec.label()}: only {_joined(stages)} kinds declare it",
                    fix=f"Remove `{name}=` from that KindSpec (see docs/plugins.md)",
                )
            empty_ok = name in _MAY_BE_EMPTY
            if (
                not isinstance(value, tuple)
                or not (value or empty_ok)
                or not all(isinstance(v, str) and v for v in value)
            ):
                raise PluginError(
                    f"Plugin {distribution} declared `{name}` = {value!r} on {spec.label()}: it must be a "
                    f"{'' if empty_ok else 'non-empty '}tuple of names (or None: undeclared)",
                    fix=f'Write e.g. {name}=("{_EXAMPLE_NAME.get(name, "chat")}",)',
                )
        if spec.stage == "metric" and not isinstance(spec.higher_is_better, bool):
            raise PluginError(
                f"Plugin {distribution} declared the metric {spec.name!r} without saying whether higher is better",
                fix="Add higher_is_better=True (accuracy, bleu) or higher_is_better=False (losses, perplexity) to its KindSpec",
            )
        if spec.stage != "metric" and spec.higher_is_better is not None:
            raise PluginError(
                f"Plugin {distribution} declared `higher_is_better` on {spec.label()}: only metric kinds declare it",
                fix="Remove `higher_is_better=` from that KindSpec",
            )

    def add(self, spec: KindSpec, plugin: object, distribution: str) -> None:
        self.check(spec, distribution)
        self._served.append(Served(spec, plugin, distribution))

    def all(self) -> list[Served]:
        return list(self._served)

    def conflicts(self) -> list[tuple[Served, Served]]:
        """Pairs of plugins that serve the same kind for a common model kind."""
        pairs = []
        for i, a in enumerate(self._served):
            for b in self._served[i + 1 :]:
                if a.spec.stage != b.spec.stage or a.spec.name != b.spec.name:
                    continue
                if a.spec.models is None or b.spec.models is None or set(a.spec.models) & set(b.spec.models):
                    pairs.append((a, b))
        return pairs

    def kinds(self, stage: Stage, model_kind: str | None = None) -> list[str]:
        return sorted(
            {s.spec.name for s in self._served if s.spec.stage == stage and s.spec.serves_model(model_kind)}
        )

    def exports_for(self, model_kind: str, adapter_kind: str) -> list[str]:
        """The export kinds for ``model_kind`` that handle ``adapter_kind``."""
        return sorted(
            {
                s.spec.name
                for s in self._served
                if s.spec.stage == "export"
                and s.spec.serves_model(model_kind)
                and s.spec.handles_adapter(adapter_kind)
            }
        )

    def data_kinds_for(self, accepted: tuple[str, ...]) -> list[str]:
        """The data kinds declared to produce one of the ``accepted`` record shapes."""
        return sorted(
            {
                s.spec.name
                for s in self._served
                if s.spec.stage == "data" and s.spec.produces and set(s.spec.produces) & set(accepted)
            }
        )

    def lookup(self, stage: Stage, name: str, model_kind: str | None = None) -> Served:
        """The one plugin serving ``name`` at ``stage`` (for ``model_kind``), or a clear error."""
        same_name = [s for s in self._served if s.spec.stage == stage and s.spec.name == name]
        matches = [s for s in same_name if s.spec.serves_model(model_kind)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            who = " and ".join(f"{m.distribution} ({m.spec.label()})" for m in matches)
            raise PluginError(
                f"The {stage} kind {name!r} is served by more than one plugin: {who}",
                fix="Uninstall one of them (`pip uninstall <distribution>`); loraplug never picks one silently",
            )
        if same_name:
            for_models = ", ".join(f"{s.spec.label()} from {s.distribution}" for s in same_name)
            raise PluginError(
                f"The {stage} kind {name!r} does not work with model kind {model_kind!r}; installed: {for_models}",
                fix=f"Pick a {stage} kind for {model_kind!r}: {', '.join(self.kinds(stage, model_kind)) or 'none installed'}",
            )
        known = self.kinds(stage, model_kind)
        provider = self._install_hints.get((stage, name))
        if provider is not None:
            raise PluginError(
                f"The {stage} kind {name!r} is provided by the plugin {provider}, which is not installed "
                f"(`pip install {provider}`)",
                fix=f"Install it, then run again; from a checkout of loraplug: `pip install -e plugins/{provider.removeprefix('loraplug-')}`",
            )
        from difflib import get_close_matches  # imported here: only errors need it

        hint = get_close_matches(name, known, n=1)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        raise PluginError(
            f"No installed plugin serves the {stage} kind {name!r}.{did_you_mean} "
            f"Known {stage} kinds: {', '.join(known) or 'none'}",
            fix=f"Fix `{stage}.kind`, or install the plugin that provides it (`loraplug plugins list` shows what is installed)",
        )
