"""Checking a recipe completely before anything loads.

Every problem is collected — unknown keys with a "did you mean", wrong types with the expected type,
missing files with their path, kinds no plugin serves — and reported together with the line each key
is on, so one ``loraplug recipe check`` shows everything to fix.
"""

from __future__ import annotations

from difflib import get_close_matches
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from loraplug.data.clean import plan_filters
from loraplug.data.options import CORE_DATA_KEYS, DataCoreOptions
from loraplug.errors import LoraplugError, PluginError, RecipeError
from loraplug.kinds import DEFAULT_OBJECTIVE, DEPLOYABLE, EXPORT_NEEDS, Served, Stage
from loraplug.options import DIR_NAME_RULE, dir_name_problem
from loraplug.plugins import PluginHost
from loraplug.recipe.model import DataSection, ExportSection, KindSection, Recipe
from loraplug.recipe.sections import DEPRECATED_TRAIN_KEYS, EvalSection, RunSection, TrainSection
from loraplug.recipe.source import KeyPath, RecipeSource, apply_override, dotted, read_recipe

SECTIONS = ("run", "data", "model", "adapter", "train", "optimizer", "objective", "eval", "export")
M = TypeVar("M", bound=BaseModel)

#: What ``--smoke`` does to any recipe besides swapping the model for its tiny preset.
SMOKE_TRAIN = {"max_steps": 3, "batch_size": 2, "grad_accum_steps": 2, "log_every_n_steps": 1}
SMOKE_SAMPLES = 16


class _Checker:
    def __init__(self, source: RecipeSource, host: PluginHost, *, check_files: bool) -> None:
        self.source = source
        self.host = host
        self.problems: list[str] = []
        self.notes: list[str] = []  # deprecations: the recipe works, but should be written differently
        self.context = {"base_dir": source.path.parent.absolute(), "check_files": check_files}

    def check(self, cls: type[M], table: Any, path: KeyPath) -> M | None:
        if not isinstance(table, dict):
            self.problems.append(
                f"`{dotted(path)}` must be a table (write it as [{dotted(path)}]), not {type(table).__name__} "
                f"({self.source.where(path)})"
            )
            return None
        try:
            return cls.model_validate(table, context=self.context)
        except ValidationError as exc:
            self.problems.extend(self.describe(err, path, cls) for err in exc.errors())
            return None

    def describe(self, err: ErrorDetails, path: KeyPath, cls: type[BaseModel]) -> str:
        loc: KeyPath = path + tuple(err["loc"])
        key, where = dotted(loc), self.source.where(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            known = list(_fields_at(cls, tuple(err["loc"][:-1])))
            if path == ("data",) and len(err["loc"]) == 1:
                known += sorted(CORE_DATA_KEYS)  # the core's keys of [data] are valid there too
            close = get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
            if close:
                hint = f"; did you mean `{dotted((*loc[:-1], close[0]))}`?"
            elif known:
                hint = f"; known keys here: {', '.join(known)}"
            else:
                hint = f"; [{dotted(loc[:-1])}] takes no keys for the kind chosen (remove the key, or choose a kind that has it)"

            return f"unknown key `{key}` ({where}){hint}"
        if kind == "missing":
            return f"missing key `{key}` ({where})"
        message = err["msg"].removeprefix("Value error, ") + _type_hint(kind, err.get("input"))
        if kind.startswith("path_"):
            return f"`{key}`: {message} ({where})"
        if not err["loc"]:
            return f"[{key}]: {message} ({where})"
        return f"`{key}` = {_show(err.get('input'))}: {message} ({where})"

    def export_name(self, table: Any, index: int) -> str | None:
        """``export[index].name`` ("" when unset: the kind names it), or None when it cannot name a directory."""
        name = table.get("name", "") if isinstance(table, dict) else ""
        key, where = f"export[{index}].name", self.source.where(("export", index, "name"))
        if not isinstance(name, str):
            self.problems.append(
                f"`{key}` = {_show(name)}: must be a string, the export's directory under exports/ ({where})"
            )
            return None
        if name and (problem := dir_name_problem(name)) is not None:
            self.problems.append(f"`{key}` = {_show(name)}: {problem}; it must be {DIR_NAME_RULE} ({where})")
            return None
        return name

    def kind_section(
        self, stage: Stage, table: Any, path: KeyPath, model_kind: str | None
    ) -> KindSection | None:
        if not isinstance(table, dict):
            if table is None:
                known = ", ".join(self.host.registry.kinds(stage, model_kind)) or "none installed"
                self.problems.append(f"the [{stage}] section is missing; it needs a `kind` (known: {known})")
            else:
                self.problems.append(f"`{dotted(path)}` must be a table ({self.source.where(path)})")
            return None
        kind = table.get("kind")
        if not isinstance(kind, str):
            known = ", ".join(self.host.registry.kinds(stage, model_kind)) or "none installed"
            what = "missing" if kind is None else f"must be a string, not {_show(kind)}"
            self.problems.append(
                f"`{dotted((*path, 'kind'))}` is {what} ({self.source.where(path)}); known {stage} kinds: {known}"
            )
            return None
        try:
            served = self.host.lookup(stage, kind, model_kind)
        except LoraplugError as exc:
            self.problems.append(
                f"`{dotted((*path, 'kind'))}` = {kind!r} ({self.source.where((*path, 'kind'))}): {exc.what}"
            )
            return None
        # `name` is an export's directory under exports/; no other section has one.
        reserved = {"data": ("kind", *CORE_DATA_KEYS), "export": ("kind", "name")}.get(stage, ("kind",))
        options = {k: v for k, v in table.items() if k not in reserved}
        checked = self.check(served.spec.options_model(), options, path)
        if stage == "data":
            # The core's own keys of [data] (clean, balance_by, weight_by) never reach the data plugin.
            core = self.check(DataCoreOptions, {k: v for k, v in table.items() if k in CORE_DATA_KEYS}, path)
            if checked is None or core is None:
                return None
            # [[data.clean.filters]]: each table names a filter kind, checked against its options.
            filters = [
                self.kind_section("filter", entry, (*path, "clean", "filters", index), model_kind)
                for index, entry in enumerate(core.clean.filters)
            ]
            if any(f is None for f in filters):
                return None
            return DataSection(
                kind=kind,
                options=checked,
                served=served,
                core=core,
                filters=[f for f in filters if f is not None],
            )
        return None if checked is None else KindSection(kind=kind, options=checked, served=served)

    def chosen_in_train(
        self, stage: Stage, raw_train: Any, table: Any, default: str, model_kind: str | None
    ) -> tuple[str, Served, dict[str, Any]] | None:
        """A kind named in ``[train]`` (``train.optimizer``, ``train.objective``) whose options are the
        table named after its stage: ``(kind, the plugin serving it, the table)``, or None when reported."""
        kind = raw_train.get(stage, default) if isinstance(raw_train, dict) else default
        if not isinstance(kind, str):
            return None  # reported by the [train] check
        table = {} if table is None else table
        if not isinstance(table, dict):
            self.problems.append(f"`{stage}` must be a table, [{stage}] ({self.source.where((stage,))})")
            return None
        if "kind" in table:
            self.problems.append(
                f"`{stage}.kind` ({self.source.where((stage, 'kind'))}): the {stage} kind is train.{stage}; "
                f"[{stage}] holds only its options"
            )
            return None
        try:
            served = self.host.lookup(stage, kind, model_kind)
        except LoraplugError as exc:
            self.problems.append(
                f"`train.{stage}` = {kind!r} ({self.source.where(('train', stage))}): {exc.what}"
            )
            return None
        return kind, served, dict(table)

    def objective_section(self, raw_train: Any, table: Any, model_kind: str | None) -> KindSection | None:
        """``train.objective``'s kind (default ``sft``: the model's own loss) with ``[objective]`` as its options."""
        chosen = self.chosen_in_train("objective", raw_train, table, DEFAULT_OBJECTIVE, model_kind)
        if chosen is None:
            return None
        kind, served, options = chosen
        checked = self.check(served.spec.options_model(), options, ("objective",))
        return None if checked is None else KindSection(kind=kind, options=checked, served=served)

    def optimizer_section(
        self, raw_train: Any, table: Any, train: TrainSection | None, model_kind: str | None
    ) -> KindSection | None:
        """``train.optimizer``'s kind with the ``[optimizer]`` table as its options; the deprecated
        ``train.betas`` / ``train.eps`` move into that table when the kind has them."""
        chosen = self.chosen_in_train("optimizer", raw_train, table, "adamw", model_kind)
        if chosen is None:
            return None
        kind, served, options = chosen
        model = served.spec.options_model()
        for key in DEPRECATED_TRAIN_KEYS:
            if train is None or getattr(train, key) is None:
                continue
            where = self.source.where(("train", key))
            if key in options:
                self.problems.append(
                    f"`train.{key}` ({where}) and `optimizer.{key}` are both set; keep `optimizer.{key}` only"
                )
            elif key in model.model_fields:
                options[key] = raw_train[key]
                self.notes.append(
                    f"`train.{key}` ({where}) is deprecated: it is read as `optimizer.{key}`; write it in [optimizer]"
                )
            else:
                known = ", ".join(model.model_fields) or "none"
                self.problems.append(
                    f"`train.{key}` ({where}) is AdamW's option, and the {kind} optimizer has no `{key}`; "
                    f"its options go in [optimizer] (keys: {known})"
                )
            setattr(train, key, None)  # the resolved recipe has it in [optimizer] only
        checked = self.check(model, options, ("optimizer",))
        return None if checked is None else KindSection(kind=kind, options=checked, served=served)


def _known(table: Any, host: PluginHost, stage: Stage, model_kind: str | None = None) -> Served | None:
    """The plugin serving a section's raw ``kind``, even if the section's options failed to validate."""
    kind = table.get("kind") if isinstance(table, dict) else None
    if not isinstance(kind, str):
        return None
    try:
        return host.lookup(stage, kind, model_kind)
    except LoraplugError:
        return None


def adapter_misfit(host: PluginHost, export: Served, model_kind: str, adapter_kind: str) -> str | None:
    """Why ``export`` cannot export an adapter of ``adapter_kind`` (None when it can), naming the exports that can."""
    spec = export.spec
    if spec.handles_adapter(adapter_kind):
        return None
    others = ", ".join(host.registry.exports_for(model_kind, adapter_kind)) or "none installed"
    return (
        f"the {spec.name} export ({export.distribution}) does not handle adapter kind {adapter_kind!r} "
        f"(only {', '.join(spec.adapters or ())}); export kinds for {model_kind} that handle {adapter_kind}: {others}"
    )


def _offers_deployable(host: PluginHost, model: Served) -> bool:
    """Whether the plugin serving the model kind implements ``loraplug_deployable`` (nothing is called)."""
    return any(impl.plugin is model.plugin for impl in host.pm.hook.loraplug_deployable.get_hookimpls())


def needs_misfit(
    host: PluginHost, export: Served, model: Served, adapter_kind: str | None = None
) -> str | None:
    """Why ``export`` cannot export the model kind ``model`` (None when it can): what it needs of the model
    (``KindSpec.needs``) that the model's plugin lacks, naming the exports that fit."""
    deployable = _offers_deployable(host, model)
    unmet = export.spec.unmet_needs(model.spec, deployable=deployable)
    if not unmet:
        return None
    lacks = []
    for need in unmet:
        wanted = EXPORT_NEEDS.get(need, repr(need))
        if need == DEPLOYABLE:
            lacks.append(
                f"it needs {wanted}, which {model.distribution} does not hand exporters (it does not implement loraplug_deployable)"
            )
        else:
            offered = ", ".join(model.spec.provides or ()) or "nothing"
            lacks.append(
                f"it needs {wanted}, which the model kind does not provide (it declares provides: {offered})"
            )
    fitting = sorted(
        {
            s.spec.name
            for s in host.registry.all()
            if s.spec.stage == "export"
            and s.spec.serves_model(model.spec.name)
            and s.spec.handles_adapter(adapter_kind)
            and not s.spec.unmet_needs(model.spec, deployable=deployable)
        }
    )
    return (
        f"the {export.spec.name} export ({export.distribution}) cannot export the model kind {model.spec.name!r} "
        f"({model.distribution}): {'; '.join(lacks)}; export kinds that fit {model.spec.name}: {', '.join(fitting) or 'none installed'}"
    )


def produced_shapes(data: Served, options: BaseModel | None) -> tuple[str, ...] | None:
    """The record shapes the data kind ``data`` produces with ``options``: what its options model narrows
    them to (an optional method ``produces(self) -> tuple[str, ...]``, e.g. webdataset's ``samples``),
    else what its ``KindSpec.produces`` declares (``None``: undeclared, never checked).

    :param options: the data kind's validated options; ``None`` when they failed (the declaration holds).
    :raises PluginError: the options name a shape outside the kind's declaration, or no shape at all.
    """
    declared = data.spec.produces
    narrow = getattr(options, "produces", None)
    if options is None or not callable(narrow):
        return declared
    shapes = narrow()
    shapes = (shapes,) if isinstance(shapes, str) else shapes
    if (
        not isinstance(shapes, tuple | list)
        or not shapes
        or not all(isinstance(shape, str) and shape for shape in shapes)
        or (declared is not None and not set(shapes) <= set(declared))
    ):
        raise PluginError(
            f"The options of the data kind {data.spec.name!r} ({data.distribution}) say it produces {shapes!r}, "
            f"which is not a non-empty tuple of the shapes its KindSpec declares ({', '.join(declared or ()) or 'any'})",
            fix="This is a bug in the plugin that declared the kind; report it to its authors",
        )
    return tuple(shapes)


def _filter_misfits(
    host: PluginHost, data: DataSection, produces: tuple[str, ...] | None, model_kind: str | None
) -> list[tuple[KeyPath, str]]:
    """The ``[data.clean]`` filters that cannot read the records the data kind produces: where each was
    asked for, and why (a filter kind's ``accepts`` against ``produces``, the data kind's shapes as its
    options are set)."""
    if produces is None:
        return []
    misfits = []
    for planned in plan_filters(data.core.clean, [(f.kind, f.options) for f in data.filters]):
        try:
            served = host.lookup("filter", planned.kind, model_kind)
        except LoraplugError:
            continue  # reported with the filter's own table
        if served.spec.accepts is None or set(produces) & set(served.spec.accepts):
            continue
        # The plan's key: "data.clean.min_resolution", "data.clean.filters[2]", "data.clean.min_chars / max_chars".
        first = planned.key.split(" ")[0].replace("]", "").replace("[", ".")
        path: KeyPath = tuple(int(part) if part.isdigit() else part for part in first.split("."))
        misfits.append(
            (
                path,
                f"the {planned.kind} filter ({served.distribution}) reads {' or '.join(served.spec.accepts)} records, and "
                f"the data kind {data.kind!r} ({data.served.distribution}) produces {' or '.join(produces)} records; "
                "remove the filter for this data",
            )
        )
    return misfits


def data_problems(model: BaseModel, data: KindSection) -> list[str]:
    """The model kind's own look at the data (an optional method of its options model,
    ``check_data(self, data_kind, data_options) -> list[str]``): what a model must know of the data and
    can check in a second where the files are local — a classifier's labels against the samples'."""
    check = getattr(model, "check_data", None)
    return list(check(data.kind, data.options)) if callable(check) else []


def _shape_misfit(
    host: PluginHost, data: Served, produces: tuple[str, ...] | None, model: Served
) -> str | None:
    """Why ``model`` cannot train on the records ``data`` produces — ``produces``, as its options are set —
    (None when it can, or either is undeclared)."""
    accepts = model.spec.accepts
    if produces is None or accepts is None or set(produces) & set(accepts):
        return None
    fitting = ", ".join(host.registry.data_kinds_for(accepts)) or "none installed"
    # A data kind whose options picked the shape may produce a fitting one with other options: say so.
    others = [shape for shape in data.spec.produces or () if shape not in produces]
    by_options = f" with its options as set (other options produce {' or '.join(others)})" if others else ""
    return (
        f"the data kind {data.spec.name!r} ({data.distribution}) produces {' or '.join(produces)} records{by_options}, "
        f"but the model kind {model.spec.name!r} ({model.distribution}) trains on {' or '.join(accepts)} records; "
        f"data kinds that produce them: {fitting}"
    )


def load_recipe(
    path: Path,
    host: PluginHost,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    smoke: bool = False,
    check_files: bool = True,
) -> Recipe:
    """Read, override and validate a recipe; raise :class:`RecipeError` listing every problem.

    :param check_files: require input files to exist (off when re-reading a finished run's recipe).
    """
    source = read_recipe(path, overrides)
    smoke_notes = _apply_smoke(source, host) if smoke else []
    raw = source.data
    checker = _Checker(source, host, check_files=check_files)
    checker.notes.extend(smoke_notes)
    for key in raw:
        if key not in SECTIONS:
            close = get_close_matches(key, SECTIONS, n=1)
            hint = f"; did you mean [{close[0]}]?" if close else f"; the sections are {', '.join(SECTIONS)}"
            checker.problems.append(f"unknown section `{key}` ({source.where((key,))}){hint}")

    run = checker.check(RunSection, raw.get("run", {}), ("run",))
    train = checker.check(TrainSection, raw.get("train", {}), ("train",))
    evaluation = checker.check(EvalSection, raw.get("eval", {}), ("eval",))
    model = checker.kind_section("model", raw.get("model"), ("model",), None)
    model_served = model.served if model else _known(raw.get("model"), host, "model")
    model_kind = model_served.spec.name if model_served else None
    # Adapter, export and metric kinds are served per model kind: with no known model kind they cannot
    # be told apart, so they wait until model.kind is fixed rather than report false conflicts.
    scoped = model_kind is not None
    data = checker.kind_section("data", raw.get("data"), ("data",), model_kind)
    adapter = (
        checker.kind_section("adapter", raw.get("adapter"), ("adapter",), model_kind) if scoped else None
    )
    optimizer = checker.optimizer_section(raw.get("train", {}), raw.get("optimizer"), train, model_kind)
    objective = (
        checker.objective_section(raw.get("train", {}), raw.get("objective"), model_kind) if scoped else None
    )
    adapter_served = (
        adapter.served
        if adapter
        else _known(raw.get("adapter"), host, "adapter", model_kind)
        if scoped
        else None
    )
    data_served = data.served if data else _known(raw.get("data"), host, "data", model_kind)
    # What the data produces as its options are set (`samples = "text"`), else as its kind declares.
    produces = produced_shapes(data_served, data.options if data else None) if data_served else None
    if data_served is not None and model_served is not None:
        # Checked here, not when the model meets its first batch after minutes of loading.
        if (misfit := _shape_misfit(host, data_served, produces, model_served)) is not None:
            checker.problems.append(
                f"`data.kind` = {data_served.spec.name!r} ({source.where(('data', 'kind'))}): {misfit}"
            )
    if objective is not None and produces is not None and objective.served.spec.accepts is not None:
        # An objective reads records of its own shape (dpo: preference pairs), whatever the model accepts.
        wanted = objective.served.spec.accepts
        if not set(produces) & set(wanted):
            fitting = ", ".join(host.registry.data_kinds_for(wanted)) or "none installed"
            checker.problems.append(
                f"`train.objective` = {objective.kind!r} ({source.where(('train', 'objective'))}): it trains on "
                f"{' or '.join(wanted)} records, and the data kind {data_served.spec.name if data_served else '?'!r} "
                f"produces {' or '.join(produces)} records; data kinds that produce them: {fitting}"
            )
    if isinstance(data, DataSection):
        for asked_at, misfit in _filter_misfits(host, data, produces, model_kind):
            checker.problems.append(f"`{dotted(asked_at)}` ({source.where(asked_at)}): {misfit}")
    if model is not None and data is not None:
        for problem in data_problems(model.options, data):
            checker.problems.append(f"`data` ({source.where(('data',))}): {problem}")

    exports: list[ExportSection] = []
    raw_exports = raw.get("export", [])
    if isinstance(raw_exports, dict):
        raw_exports = [raw_exports]  # a single [export] table is one export
    if not isinstance(raw_exports, list):
        checker.problems.append(f"`export` must be [[export]] tables ({source.where(('export',))})")
        raw_exports = []
    names: dict[str, int] = {}
    for index, table in enumerate(raw_exports if scoped else []):
        section = checker.kind_section("export", table, ("export", index), model_kind)
        # What the export fits is checked even when its options failed: every problem at once.
        served = section.served if section else _known(table, host, "export", model_kind)
        if served is not None and model_served is not None:
            adapter_kind = adapter_served.spec.name if adapter_served is not None else None
            for misfit in (
                adapter_misfit(host, served, model_served.spec.name, adapter_kind)
                if adapter_kind is not None
                else None,
                needs_misfit(host, served, model_served, adapter_kind),
            ):
                if misfit is not None:
                    checker.problems.append(
                        f"`export[{index}].kind` = {served.spec.name!r} ({source.where(('export', index, 'kind'))}): {misfit}"
                    )
        name = checker.export_name(table, index)
        if section is None or name is None:
            continue
        name = name or section.kind
        if name in names:
            checker.problems.append(
                f"`export[{index}]` writes to exports/{name}/ like export[{names[name]}] "
                f"({source.where(('export', index))}); give one of them a different `name`"
            )
        names[name] = index
        exports.append(ExportSection(section.kind, section.options, section.served, name=name))

    metrics: dict[str, Any] = {}
    if evaluation is not None and scoped:
        for index, name in enumerate(evaluation.metrics):
            try:
                metrics[name] = host.lookup("metric", name, model_kind)
            except LoraplugError as exc:
                checker.problems.append(
                    f"`eval.metrics[{index}]` = {name!r} ({source.where(('eval', 'metrics'))}): {exc.what}"
                )
        watched = evaluation.monitor
        if watched != "val_loss" and watched not in evaluation.metrics:
            known = ["val_loss", *host.registry.kinds("metric", model_kind)]
            close = get_close_matches(watched, known, n=1)
            hint = f"did you mean {close[0]!r}? Or " if close and close[0] != watched else ""
            checker.problems.append(
                f"`eval.monitor` = {watched!r} ({source.where(('eval', 'monitor'))}): it is neither val_loss nor one of "
                f"eval.metrics ({', '.join(evaluation.metrics) or 'none'}); {hint}add it to eval.metrics"
            )

    # A kind that streams only with some options says so by a method ``streams(self) -> bool`` on them.
    option_streams = getattr(data.options, "streams", None) if data is not None else None
    streams = callable(option_streams) and bool(option_streams())
    if (
        data is not None
        and (data.served.spec.streams or streams)
        and train is not None
        and train.max_steps is None
    ):
        checker.problems.append(
            f"`train.max_steps` is missing ({source.where(('train',))}): the data kind {data.kind!r} streams its "
            "samples, so the run's length cannot be derived from epochs; set train.max_steps"
        )
    if run is not None and not run.name:
        # The default name comes from the file name, which the rule for names applies to as well.
        if (name_problem := dir_name_problem(path.stem)) is None:
            run.name = path.stem
        else:
            checker.problems.append(
                f"`run.name` is unset and the recipe's file name {path.stem!r} {name_problem}, so it cannot name the run "
                f"directory ({source.where(('run',))}); set run.name to {DIR_NAME_RULE}"
            )
    if checker.problems:
        raise RecipeError(str(path), checker.problems)
    assert run and train and evaluation and model and adapter and optimizer and objective  # noqa: S101 — no problems means all parsed
    assert isinstance(data, DataSection)  # noqa: S101
    return Recipe(
        path=path, run=run, data=data, model=model, adapter=adapter, train=train, optimizer=optimizer, eval=evaluation,
        objective=objective, exports=exports, metrics=metrics, notes=checker.notes,
    )  # fmt: skip


def _apply_smoke(source: RecipeSource, host: PluginHost) -> list[str]:
    """Apply ``--smoke`` to the recipe's tables; return what the model kind's plugin says about it."""
    raw = source.data
    model = raw.get("model")
    notes: list[str] = []
    if isinstance(model, dict) and isinstance(model.get("kind"), str):
        try:
            spec = host.lookup("model", model["kind"]).spec
        except LoraplugError:
            spec = None  # reported by validation
        if spec is not None:
            overrides, note = spec.smoke_overrides(model, source.path.parent.absolute())
            notes += [note] if note else []
            for key, value in overrides.items():
                model[key] = value
                source.overridden[("model", key)] = f"--smoke (model.{key}={value!r})"
    train = raw.setdefault("train", {})
    if isinstance(train, dict):
        train.pop("epochs", None)
        train.pop("effective_batch_size", None)  # smoke runs a fixed small batch, never "auto"
        for key, cap in SMOKE_TRAIN.items():
            current = train.get(key)
            train[key] = min(current, cap) if isinstance(current, int) and key != "log_every_n_steps" else cap
            source.overridden[("train", key)] = f"--smoke (train.{key}={train[key]})"
    evaluation = raw.get("eval")
    if isinstance(evaluation, dict):
        if isinstance(evaluation.get("sample_prompts"), list):
            evaluation["sample_prompts"] = evaluation["sample_prompts"][:1]
        evaluation["max_batches"] = 2
    run = raw.setdefault("run", {})
    if isinstance(run, dict):
        run["output_dir"] = str(Path(str(run.get("output_dir", "runs"))) / "smoke")
    return notes


def _fields_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> dict[str, Any]:
    """The fields of the (possibly nested) options model at ``loc``."""
    current: Any = cls
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return {}
        current = field.annotation
    return dict(getattr(current, "model_fields", {}))


#: Strict types' errors, by what was expected.
_EXPECTED = {
    "int_type": "a whole number",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
}


def _type_hint(kind: str, value: Any) -> str:
    """What to write instead, for a value of the wrong TOML type (strict options never convert it)."""
    expected = _EXPECTED.get(kind)
    if expected is None:
        return ""
    if isinstance(value, bool):
        return f" ({str(value).lower()} is a boolean; write {expected})"
    if isinstance(value, str) and kind != "string_type":
        return f" (a string; write {expected} without quotes)"
    if isinstance(value, float) and kind == "int_type":
        return " (write it without a decimal point or exponent)"
    if isinstance(value, (int, float)) and kind == "bool_type":
        return f" ({value} is a number; write true or false)"
    if isinstance(value, (int, float)) and kind == "string_type":
        return f' (a number; write it in quotes: "{value}")'
    return ""


def _show(value: Any) -> str:
    text = str(value).lower() if isinstance(value, bool) else repr(value)  # as TOML writes it
    return text if len(text) <= 60 else text[:57] + "..."


def export_section(
    host: PluginHost,
    kind: str,
    settings: list[str] | tuple[str, ...],
    *,
    name: str,
    model_kind: str,
    adapter_kind: str | None = None,
) -> ExportSection:
    """One export given on the command line (``--kind onnx tolerance=1e-3``), checked like an ``[[export]]``.

    :param settings: ``key=value`` pairs of the export's options; values are TOML (``1e-3``, ``true``),
        anything else a string.
    :param adapter_kind: the run's ``adapter.kind``: an export that does not handle it is refused.
    :raises LoraplugError: listing every problem, each naming the setting it came from.
    """
    if (problem := dir_name_problem(name)) is not None:
        # The same rule as an [[export]]'s `name`: the export's directory stays inside exports/.
        raise LoraplugError(
            f"The export name {name!r} {problem}", where="--name", fix=f"Use {DIR_NAME_RULE}, e.g. onnx-fp32"
        )
    served = host.lookup("export", kind, model_kind)  # an unknown or uninstalled kind, with its own fix
    if (
        adapter_kind is not None
        and (misfit := adapter_misfit(host, served, model_kind, adapter_kind)) is not None
    ):
        raise LoraplugError(
            f"The run's adapter cannot be exported as {kind}: {misfit}",
            where="--kind",
            fix="Export it as one of the kinds named, or train the run with an adapter kind this export handles",
        )
    if (misfit := needs_misfit(host, served, host.lookup("model", model_kind), adapter_kind)) is not None:
        # Refused before the run's model is rebuilt, as recipe check refuses it in [[export]].
        raise LoraplugError(
            f"The run's model cannot be exported as {kind}: {misfit}",
            where="--kind",
            fix="Export it as one of the kinds named, or ask the model plugin's authors for what the export needs",
        )
    source = RecipeSource(path=Path("the command line"), text="", data={"export": {"kind": kind}})
    for setting in settings:
        if "=" not in setting or setting.startswith(("export.", "~")):
            raise LoraplugError(
                f"The export setting {setting!r} is not KEY=VALUE",
                fix=f"Write the export's options as e.g. `tolerance=1e-3`; `loraplug recipe keys` lists the keys of {kind!r}",
            )
        if setting.partition("=")[0].strip() == "name":
            raise LoraplugError(
                f"The export setting {setting!r} is not an option of the export",
                fix="Name the export's directory with --name",
            )
        apply_override(source, f"export.{setting}")
        for path, given in source.overridden.items():
            if given == f"export.{setting}":
                source.overridden[path] = setting
    checker = _Checker(source, host, check_files=True)
    section = checker.kind_section("export", source.data["export"], ("export",), model_kind)
    if checker.problems or section is None:
        raise RecipeError(
            "the command line",
            checker.problems,
            subject=f"The {kind} export's command line",
            fix="Fix the KEY=VALUE settings; `loraplug recipe keys` (and docs/recipes.md) lists every export kind's keys",
        )
    return ExportSection(section.kind, section.options, section.served, name=name)


def command_line_section(
    host: PluginHost,
    stage: Stage,
    table: dict[str, Any],
    *,
    given: dict[str, str] | None = None,
    subject: str,
    fix: str,
) -> KindSection:
    """A kind and its options given outside a recipe (``loraplug data caption --kind wd14 --option
    threshold=0.5``, a studio form), checked as a recipe's section is: every problem named at once.

    :param table: ``kind`` and the kind's options.
    :param given: how each option was written, by key, for the errors' "where"
        (``{"threshold": "--option threshold=2"}``); otherwise "the command line".
    :raises LoraplugError: an unknown kind (with the installed ones) or invalid options.
    """
    source = RecipeSource(path=Path("the command line"), text="", data={stage: dict(table)})
    source.overridden = {(stage, key): text for key, text in (given or {}).items()}
    checker = _Checker(source, host, check_files=True)
    section = checker.kind_section(stage, source.data[stage], (stage,), None)
    if checker.problems or section is None:
        raise RecipeError("the command line", checker.problems, subject=subject, fix=fix)
    return section
