"""The core's own kinds, served through the same hooks as any plugin's (as tox's built-in plugins are).

The optimizer ``adamw``, the objective ``sft`` (the model kind's own loss) and the cleaning filters behind the ``[data.clean]`` keys are kinds like a
plugin's: ``loraplug plugins list`` shows them, ``loraplug recipe keys`` documents their options, a
recipe's ``[optimizer]`` table is checked against them, and the pipeline builds them through
``loraplug_build_optimizer`` / ``loraplug_build_filter`` — the one path a third party's optimizer or
filter takes too. :class:`~loraplug.plugins.PluginHost` registers this module first, as the
distribution ``loraplug``.

Nothing heavy is imported here: torch and the filters' libraries load inside the hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loraplug.hookspecs import hookimpl
from loraplug.kinds import DEFAULT_OBJECTIVE, KindSpec

if TYPE_CHECKING:
    from loraplug.context import RunContext
    from loraplug.data.filters import Filter
    from loraplug.recipe.sections import AdamWOptions

#: The distribution name the core's built-in plugin is listed under.
DISTRIBUTION = "loraplug"
NAME = "core"

#: The core's own filter kinds: ``(kind, options model in loraplug.data.filters, summary)``, in the order they run.
BUILTIN_FILTERS: tuple[tuple[str, str, str], ...] = (
    ("empty_responses", "NoFilterOptions", "chat samples with an empty assistant turn ([data.clean] drop_empty_responses)"),
    ("include", "PatternOptions", "samples whose text matches none of the patterns ([data.clean] include)"),
    ("exclude", "PatternOptions", "samples whose text matches a pattern ([data.clean] exclude)"),
    ("length_chars", "CharLengthOptions", "samples with too few or too many characters ([data.clean] min_chars, max_chars)"),
    ("min_resolution", "MinResolutionOptions", "images below a resolution ([data.clean] min_resolution)"),
    ("exact_dedup", "NoFilterOptions", "samples identical to an earlier one ([data.clean] exact_dedup)"),
    ("near_dedup", "NearDedupOptions", "text near-duplicates by MinHash ([data.clean] near_dedup_threshold)"),
    ("image_dedup", "ImageDedupOptions", "perceptually identical images ([data.clean] image_dedup_distance)"),
)  # fmt: skip

#: The core's filters that read a record's image, not its text.
IMAGE_FILTERS = ("min_resolution", "image_dedup")


@hookimpl
def loraplug_register_kinds(register: Callable[[KindSpec], None]) -> None:
    register(
        KindSpec(
            "optimizer",
            "adamw",
            "loraplug.recipe.sections:AdamWOptions",
            "torch.optim.AdamW, fused on CUDA (the default)",
        )
    )
    register(
        KindSpec(
            "objective",
            DEFAULT_OBJECTIVE,
            "loraplug.options:NoOptions",
            "the model kind's own loss, computed by the model's plugin (the default)",
        )
    )
    for kind, options, summary in BUILTIN_FILTERS:
        # The image filters read images: recipe check refuses them on data that has none.
        reads = ("caption-image",) if kind in IMAGE_FILTERS else None
        register(KindSpec("filter", kind, f"loraplug.data.filters:{options}", summary, accepts=reads))


@hookimpl
def loraplug_build_optimizer(
    kind: str, options: AdamWOptions, param_groups: list[dict[str, Any]], ctx: RunContext
) -> Any:
    from loraplug.training.optim import adamw

    return adamw(options, param_groups, ctx.device)


@hookimpl
def loraplug_build_filter(kind: str, options: Any, ctx: RunContext) -> Filter:
    from loraplug.data.filters import builtin_filter

    return builtin_filter(kind, options)
