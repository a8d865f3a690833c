"""Recipe forms generated from option schemas, and form values turned back into a recipe table.

Nothing here knows a plugin: every field comes from a pydantic options model (the core's sections from
``loraplug.toolkit.core_sections()``, each kind's from its ``KindSpec``), so a third-party plugin's kinds
appear in the studio the moment it is installed. A field is described by its widget (``checkbox``,
``number``, ``select``, ``path``, ``text``, or ``toml`` for lists, tables and mixed types, edited as a
TOML value), its default, description and bounds; the browser builds the inputs from that description.
"""

from __future__ import annotations

import math
import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePath
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel
from pydantic_core import PydanticUndefined, to_jsonable_python

from loraplug import KindSpec, PluginHost
from loraplug.toolkit import core_sections

#: The tables a recipe has, in the order the form shows them; ``export`` is a list of tables.
SECTIONS = ("run", "data", "model", "adapter", "train", "optimizer", "objective", "eval", "export")
#: The tables whose kind is chosen by a key of [train] (``train.optimizer``), holding that kind's options.
CHOSEN_IN_TRAIN = ("optimizer", "objective")
#: The tables whose ``kind`` picks a plugin.
KIND_SECTIONS = ("data", "model", "adapter", *CHOSEN_IN_TRAIN, "export")
#: Core keys whose value names a kind of another stage: the form offers those kinds.
KIND_VALUED = {("train", stage): stage for stage in CHOSEN_IN_TRAIN}


@dataclass
class FieldSpec:
    name: str
    widget: str
    description: str
    required: bool
    #: The default as the widget shows it (a string, a bool for a checkbox), ``None`` when there is none.
    default: Any
    choices: list[Any] = field(default_factory=list)
    #: ``ge``/``gt``/``le``/``lt`` bounds, shown beside the input (validation itself is `recipe check`'s).
    bounds: dict[str, Any] = field(default_factory=dict)
    optional: bool = False
    integer: bool = False


@dataclass
class KindForm:
    stage: str
    name: str
    distribution: str
    summary: str
    #: The model kinds it serves (empty: every model kind).
    models: list[str]
    fields: list[FieldSpec]


def _unwrap(annotation: Any) -> tuple[Any, list[Any], bool]:
    """``(base type, metadata, optional)`` of an annotation: ``Annotated`` and ``X | None`` peeled off."""
    metadata: list[Any] = []
    optional = False
    while True:
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin is typing.Annotated:
            annotation, metadata = args[0], [*metadata, *args[1:]]
        elif origin in (typing.Union, types.UnionType) and type(None) in args:
            rest = [a for a in args if a is not type(None)]
            optional = True
            if len(rest) != 1:
                return typing.Union[tuple(rest)], metadata, optional  # noqa: UP007 — built at run time
            annotation = rest[0]
        else:
            return annotation, metadata, optional


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in metadata:
        for key in ("ge", "gt", "le", "lt"):
            value = getattr(item, key, None)
            if isinstance(value, int | float) and not isinstance(value, bool):
                found[key] = value
        for nested in getattr(item, "metadata", None) or []:
            found.update(_bounds([nested]))
    return found


def _without_none(value: Any) -> Any:
    """TOML has no null: an unset option is a missing key."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value if v is not None]
    return value


def toml_value(value: Any) -> str:
    """A value as TOML writes it on the right of ``key =`` (``["a", "b"]``, ``{ x = 1 }``, ``"auto"``)."""
    value = _without_none(to_jsonable_python(value))  # options models, tuples, paths: as TOML holds them
    if value is None:
        return ""
    if isinstance(value, list):  # on one line, as a person writes it in a form
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    text = tomli_w.dumps({"v": value})
    if text.startswith("v = "):
        return text.removeprefix("v = ").strip()
    # A table value: tomli_w writes it as a [v] section; shown inline instead.
    inner = tomllib.loads(text)["v"]
    return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in inner.items()) + " }"


def _shown(value: Any, widget: str) -> Any:
    """A recipe value as its widget holds it."""
    if value is None or value is PydanticUndefined:
        return None
    if widget == "checkbox":
        return bool(value)
    if widget == "toml":
        return toml_value(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return str(value)


def field_spec(name: str, info: Any, host: PluginHost | None = None, section: str = "") -> FieldSpec:
    base, metadata, optional = _unwrap(info.annotation)
    metadata = [*metadata, *info.metadata]
    origin = typing.get_origin(base)
    choices: list[Any] = []
    integer = False
    if (section, name) in KIND_VALUED and host is not None:
        widget = "select"
        choices = sorted(
            {s.spec.name for s in host.registry.all() if s.spec.stage == KIND_VALUED[(section, name)]}
        )
    elif base is bool:
        widget = "checkbox"
    elif base in (int, float):
        widget, integer = "number", base is int
    elif origin is Literal:
        widget, choices = "select", list(typing.get_args(base))
    elif isinstance(base, type) and issubclass(base, PurePath):
        widget = "path"
    elif base is str:
        widget = "text"
    else:
        widget = "toml"
    if any(getattr(m, "json_schema_input_type", None) is not None for m in metadata):
        widget = "toml"  # a custom validator (int or "auto"): typed as a TOML value
    if widget == "select" and any(not isinstance(c, str) for c in choices):
        widget = "toml"
    required = info.is_required()
    default = None if required else info.get_default(call_default_factory=True)
    return FieldSpec(
        name=name,
        widget=widget,
        description=info.description or "",
        required=required,
        default=_shown(default, widget),
        choices=choices,
        bounds=_bounds(metadata),
        optional=optional,
        integer=integer,
    )


def model_fields(
    model: type[BaseModel], host: PluginHost | None = None, section: str = ""
) -> list[FieldSpec]:
    return [field_spec(name, info, host, section) for name, info in model.model_fields.items()]


def schema(host: PluginHost) -> dict[str, Any]:
    """Everything the New-run page builds its form from: the core sections' fields and every kind's."""
    core = {
        name: [asdict(f) for f in model_fields(model, host, name)] for name, model in core_sections().items()
    }
    kinds: list[KindForm] = []
    broken: list[str] = []
    for served in host.registry.all():
        spec: KindSpec = served.spec
        if spec.stage not in KIND_SECTIONS:
            continue
        try:
            fields = model_fields(spec.options_model())
        except Exception as exc:  # a plugin whose options model does not import: listed, not fatal
            broken.append(f"{served.distribution}: {spec.stage} kind {spec.name!r}: {exc}")
            continue
        kinds.append(
            KindForm(
                stage=spec.stage,
                name=spec.name,
                distribution=served.distribution,
                summary=spec.summary or "",
                models=list(spec.models or ()),
                fields=[f for f in fields if f.name != "kind"],
            )
        )
    stages = {s.spec.stage for s in host.registry.all()}
    return {
        # A table chosen in [train] is shown only when some plugin serves its stage.
        "sections": [s for s in SECTIONS if s not in CHOSEN_IN_TRAIN or s in stages],
        "chosen_in_train": [s for s in CHOSEN_IN_TRAIN if s in stages],
        "core": core,
        "kinds": [asdict(k) for k in kinds],
        "broken": broken,
    }


def stage_kinds(host: PluginHost, stage: str) -> list[dict[str, Any]]:
    """The kinds of one stage with their fields (the Dataset page's caption kinds)."""
    found = []
    for served in host.registry.all():
        if served.spec.stage == stage:
            fields = model_fields(served.spec.options_model())
            found.append(
                {"name": served.spec.name, "distribution": served.distribution, "summary": served.spec.summary or "",
                 "fields": [asdict(f) for f in fields]}
            )  # fmt: skip
    return found


def parse_options(fields: list[dict[str, Any]], raw: dict[str, Any], where: str) -> dict[str, Any]:
    """A kind's option inputs as the values its options model reads (unknown keys read as TOML values)."""
    specs = {f["name"]: f for f in fields}
    return {key: parse_field(specs.get(key, LOOSE), value, f"{where}.{key}") for key, value in raw.items()}


# ------------------------------------------------------------------------------- form values → recipe


class FormError(ValueError):
    """A form value that cannot become a TOML value (``key``: what is wrong)."""


def parse_field(spec: FieldSpec | dict[str, Any], raw: Any, where: str) -> Any:
    """The TOML value of one input, by its widget: ``"3e-3"`` → ``0.003``, ``'["a"]'`` → ``["a"]``."""
    widget = spec["widget"] if isinstance(spec, dict) else spec.widget
    integer = spec["integer"] if isinstance(spec, dict) else spec.integer
    if widget == "checkbox":
        return bool(raw)
    text = str(raw).strip()
    if widget == "number":
        try:
            number = float(text)
        except ValueError:
            raise FormError(f"`{where}` = {text!r}: not a number") from None
        if integer:
            if not number.is_integer():
                raise FormError(f"`{where}` = {text!r}: a whole number is needed")
            return int(number)
        return int(text) if text.lstrip("+-").isdigit() else number
    if widget == "toml":
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            # A bare word (auto, cosine) is the string the user meant.
            if text and all(c.isalnum() or c in "-_." for c in text):
                return text
            raise FormError(
                f"`{where}` = {text}: not a TOML value (strings need quotes, lists [brackets])"
            ) from None
    return text


def chosen_in_train(current: dict[str, Any], train: Any) -> dict[str, str]:
    """``{"optimizer": "adamw", "objective": "sft"}``: the kinds [train] chooses, its defaults where unset."""
    defaults = {f["name"]: f["default"] for f in current["core"].get("train", [])}
    given = train if isinstance(train, dict) else {}
    return {stage: str(given.get(stage) or defaults.get(stage) or "") for stage in CHOSEN_IN_TRAIN}


def _specs(
    current: dict[str, Any], section: str, table: dict[str, Any], chosen: dict[str, str]
) -> dict[str, Any]:
    """The field descriptions of one table: the core's keys of ``section`` and those of its chosen kind."""
    kinds = {(k["stage"], k["name"]): k for k in current["kinds"]}
    specs: dict[str, Any] = {f["name"]: f for f in current["core"].get(section, [])}
    kind = chosen[section] if section in CHOSEN_IN_TRAIN else table.get("kind")
    if section in KIND_SECTIONS and kind:
        specs |= {f["name"]: f for f in (kinds.get((section, str(kind))) or {}).get("fields", [])}
    return specs


def _tables(recipe: dict[str, Any]) -> list[tuple[str, int | None, dict[str, Any]]]:
    """``(section, index in [[export]] or None, table)`` for every table of a recipe or form."""
    found: list[tuple[str, int | None, dict[str, Any]]] = []
    for section, value in recipe.items():
        if isinstance(value, list):
            found += [(section, i, t) for i, t in enumerate(value) if isinstance(t, dict)]
        elif isinstance(value, dict):
            found.append((section, None, value))
    return found


def _put(recipe: dict[str, Any], section: str, index: int | None, table: dict[str, Any]) -> None:
    """Put a table back where :func:`_tables` found it: ``[section]``, or the next ``[[section]]``."""
    if index is None:
        recipe[section] = table
    else:
        recipe.setdefault(section, []).append(table)


def recipe_table(form: dict[str, Any], host: PluginHost) -> dict[str, Any]:
    """The recipe a form describes. ``form`` holds, per section, ``{key: raw value}`` of the inputs that are
    set (``export``: a list of them); a kind section's ``kind`` picks the fields its values are read by.
    A key the chosen kind does not have is kept, read as a TOML value, so `recipe check` names it."""
    current = schema(host)
    chosen = chosen_in_train(current, form.get("train"))
    recipe: dict[str, Any] = {}
    for section, index, values in _tables({s: form[s] for s in SECTIONS if s in form}):
        where = section if index is None else f"{section}[{index}]"
        specs = _specs(current, section, values, chosen)
        table = {
            key: str(raw) if key == "kind" else parse_field(specs.get(key, LOOSE), raw, f"{where}.{key}")
            for key, raw in values.items()
        }
        if table or index is not None:
            _put(recipe, section, index, table)
    return recipe


#: How a key no schema describes is read: as a TOML value.
LOOSE = {"widget": "toml", "integer": False}


def form_values(recipe: dict[str, Any], host: PluginHost) -> dict[str, Any]:
    """A recipe table as the form's inputs hold it (the inverse of :func:`recipe_table`)."""
    current = schema(host)
    chosen = chosen_in_train(current, recipe.get("train"))
    out: dict[str, Any] = {}
    for section, index, table in _tables(recipe):
        specs = _specs(current, section, table, chosen)
        shown = {
            key: value if key == "kind" else _shown(value, specs.get(key, LOOSE)["widget"])
            for key, value in table.items()
        }
        _put(out, section, index, shown)
    return out


def absolute_paths(recipe: dict[str, Any], base: Path, host: PluginHost) -> dict[str, Any]:
    """``recipe`` with its relative path options made absolute against ``base`` (the recipe's directory),
    so a copy of it checked or launched from elsewhere reads the same files. ``run.output_dir`` stays: it is
    relative to the current directory, not the recipe."""
    current = schema(host)
    chosen = chosen_in_train(current, recipe.get("train"))
    out: dict[str, Any] = {}
    for section, index, table in _tables(recipe):
        specs = {} if section == "run" else _specs(current, section, table, chosen)
        fixed = {
            k: str(base / v)
            if specs.get(k, LOOSE)["widget"] == "path"
            and isinstance(v, str)
            and v
            and not Path(v).is_absolute()
            else v
            for k, v in table.items()
        }
        _put(out, section, index, fixed)
    return out
