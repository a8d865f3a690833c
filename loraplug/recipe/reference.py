"""Every recipe key of the core and of each installed kind, from the option models themselves.

``loraplug recipe keys`` prints it; docs/recipes.md embeds the Markdown form for the first-party
plugins, and a test keeps the two equal, so the reference cannot drift from the code.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from loraplug import options
from loraplug.data.options import CleanOptions, DataCoreOptions
from loraplug.kinds import KindRegistry, KindSpec, declarations
from loraplug.recipe.sections import EvalSection, RunSection, TrainSection

BEGIN = "<!-- BEGIN GENERATED: loraplug recipe keys --markdown -->"
END = "<!-- END GENERATED -->"


MUST_EXIST = {options._existing_file, options._existing_dir, options._existing_path}


@dataclass
class KeyDoc:
    name: str
    type: str
    default: str
    description: str


def describe_type(annotation: Any) -> str:
    """A reader's name for a type: ``"no" | "bf16"``, ``list of string``, ``path (must exist)``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        base = describe_type(args[0])
        must_exist = any(getattr(m, "func", None) in MUST_EXIST for m in args[1:])
        optional = " (optional)" if base.endswith(" (optional)") else ""
        return f"{base.removesuffix(optional)}{_bounds(args[1:])}{optional}" + (
            " (must exist)" if must_exist else ""
        )
    if origin is Literal:
        return " \\| ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [describe_type(a) for a in args if a is not type(None)]
        optional = " (optional)" if type(None) in args else ""
        return " or ".join(parts) + optional
    if origin in (list, tuple, dict):
        inner = ", ".join(describe_type(a) for a in args if a is not Ellipsis)
        return {list: f"list of {inner}", tuple: f"[{inner}]", dict: f"table of {inner}"}[origin]
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "table"
        if issubclass(annotation, Path):
            return "path"
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation)


def _bounds(metadata: Sequence[Any]) -> str:
    """``" in (0, 10]"`` or ``" > 0"`` from a type's constraints (``Field(gt=0, le=10)``, ``PositiveInt``)."""
    flat: list[Any] = []
    for item in metadata:
        flat.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    found: dict[str, Any] = {}
    for item in flat:
        for attribute in ("gt", "ge", "lt", "le"):
            if type(item).__name__.lower() == attribute:
                found[attribute] = getattr(item, attribute)
    show = {key: f"{value:g}" if isinstance(value, float) else str(value) for key, value in found.items()}
    low = ("(", show["gt"]) if "gt" in show else ("[", show["ge"]) if "ge" in show else None
    high = (show["lt"], ")") if "lt" in show else (show["le"], "]") if "le" in show else None
    if low and high:
        return f" in {low[0]}{low[1]}, {high[0]}{high[1]}"
    if low:
        return f" {'>' if low[0] == '(' else '≥'} {low[1]}"
    if high:
        return f" {'<' if high[1] == ')' else '≤'} {high[0]}"
    return ""


def _default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is None:
        return "—"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Path):
        return f'"{value}"'
    if isinstance(value, BaseModel):
        return "{}"  # an empty table: each of its keys at its own default
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in value) + "]"
    return str(value)


def keys_of(model: type[BaseModel]) -> list[KeyDoc]:
    docs = []
    for name, field in model.model_fields.items():
        annotation: Any = field.annotation  # a type, or a typing form such as Annotated[...]
        if field.metadata:
            annotation = typing.Annotated[(annotation, *field.metadata)]  # keep the must-exist marker
        docs.append(KeyDoc(name, describe_type(annotation), _default(field), field.description or ""))
    return docs


def sections(
    registry: KindRegistry, distributions: set[str] | None = None
) -> Iterator[tuple[str, str, type[BaseModel]]]:
    """``(heading, note, options model)`` for the core sections and every kind in ``registry``."""
    yield "[run]", "core", RunSection
    yield "[train]", "core", TrainSection
    yield "[eval]", "core", EvalSection
    yield "[data]", "core: keys of every data kind, beside the kind's own", DataCoreOptions
    yield (
        "[data.clean]",
        "core: cleaning filters for every data kind (the report is data_report.json)",
        CleanOptions,
    )
    order = {"data": 0, "filter": 1, "model": 2, "adapter": 3, "optimizer": 4, "objective": 5, "export": 6}
    served = sorted(
        (s for s in registry.all() if s.spec.stage in order),
        key=lambda s: (order[s.spec.stage], s.distribution, s.spec.name),
    )
    for item in served:
        if distributions is not None and item.distribution not in distributions:
            continue
        spec = item.spec
        scope = f" for {', '.join(spec.models)}" if spec.models else ""
        note = f"{item.distribution}: {spec.summary}{fits(spec)}"
        if spec.stage in ("optimizer", "objective"):  # the kind is train.<stage>; [<stage>] holds its options
            yield f'[{spec.stage}] with train.{spec.stage} = "{spec.name}"{scope}', note, spec.options_model()
            continue
        table = {"export": "[[export]]", "filter": "[[data.clean.filters]]"}.get(
            spec.stage, f"[{spec.stage}]"
        )
        yield f'{table} kind = "{spec.name}"{scope}', note, spec.options_model()


def fits(spec: KindSpec) -> str:
    """What a kind declares, for its heading's note: `` (produces: chat)``, `` (adapters: lora, loha;
    needs: deployable)``, `` (produces: caption-image, chat; streams)`` (:func:`loraplug.kinds.declarations`)."""
    declared = declarations(spec, separator=": ")
    return f" ({'; '.join(declared)})" if declared else ""


def metrics(
    registry: KindRegistry, distributions: set[str] | None = None
) -> list[tuple[str, str, str, str, str]]:
    """``(name, model kinds, better, distribution, summary)`` of every metric ``eval.metrics`` can name;
    ``better`` is ``higher`` or ``lower``, as the metric declares."""
    return sorted(
        (
            s.spec.name,
            ", ".join(s.spec.models) if s.spec.models else "any",
            "higher" if s.spec.higher_is_better else "lower",
            s.distribution,
            s.spec.summary,
        )
        for s in registry.all()
        if s.spec.stage == "metric" and (distributions is None or s.distribution in distributions)
    )


def optimizers(
    registry: KindRegistry, distributions: set[str] | None = None
) -> list[tuple[str, str, str, str]]:
    """``(name, model kinds, distribution, summary)`` of every optimizer kind ``train.optimizer`` can name,
    the built-in ``adamw`` first."""
    return sorted(
        (
            (
                s.spec.name,
                ", ".join(s.spec.models) if s.spec.models else "any",
                s.distribution,
                s.spec.summary,
            )
            for s in registry.all()
            if s.spec.stage == "optimizer" and (distributions is None or s.distribution in distributions)
        ),
        key=lambda row: (row[2] != "loraplug", row[2], row[0]),
    )


def markdown(registry: KindRegistry, distributions: set[str] | None = None) -> str:
    out = []
    for heading, note, model in sections(registry, distributions):
        out.append(f"### `{heading}`\n\n{note}\n")
        if heading.startswith("[[export]]"):
            out.append(
                "Every export also takes `name` (its directory under `exports/`; default: the kind).\n"
            )
        out.append("| key | type | default | meaning |\n|---|---|---|---|")
        for key in keys_of(model):
            out.append(f"| `{key.name}` | {key.type} | `{key.default}` | {key.description} |")
        out.append("")
    kinds = optimizers(registry, distributions)
    if kinds:
        out.append(
            "### Optimizers for `train.optimizer`\n\nEach kind's own options go in `[optimizer]` (its table above).\n\n"
            "| name | model kinds | plugin | meaning |\n|---|---|---|---|"
        )
        out.extend(f"| `{name}` | {models} | {dist} | {summary} |" for name, models, dist, summary in kinds)
        out.append("")
    rows = metrics(registry, distributions)
    if rows:
        out.append(
            "### Metrics for `eval.metrics`\n\n`val_loss` is the core's own (lower is better); these come from plugins.\n\n"
            "| name | model kinds | better | plugin | meaning |\n|---|---|---|---|---|"
        )
        out.extend(
            f"| `{name}` | {models} | {better} | {dist} | {summary} |"
            for name, models, better, dist, summary in rows
        )
        out.append("")
    return "\n".join(out)
