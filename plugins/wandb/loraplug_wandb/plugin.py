"""The hook of loraplug-wandb.

Nothing heavy is imported here: ``loraplug --help`` loads this module, and wandb starts a service
process, so wandb is imported only when a run has asked for it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from loraplug import LoraplugError, MetricSink, RunContext, hookimpl

#: Set to 1 to log runs to W&B. An environment variable rather than a recipe key: where a run logs
#: depends on the machine (a laptop, a cluster with a W&B account), not on what the recipe trains.
ENABLE_VARIABLE = "LORAPLUG_WANDB"
_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"", "0", "false", "no", "off"})


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    value = environ.get(ENABLE_VARIABLE, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise LoraplugError(
        f"{ENABLE_VARIABLE}={value!r} is neither on nor off",
        where="the environment",
        fix=f"Set {ENABLE_VARIABLE}=1 to log the run to Weights & Biases, or unset it",
    )


@hookimpl
def loraplug_metric_sinks(ctx: RunContext) -> MetricSink | None:
    if not enabled():
        return None
    from loraplug_wandb.sink import WandbSink

    return WandbSink.start(ctx)
