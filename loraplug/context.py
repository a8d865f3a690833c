"""The run context every stage hook receives: where to write, what to say, how the run is set."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loraplug.bundles import ModelBundle, PreparedData
    from loraplug.deploy import Deployable
    from loraplug.recipe.model import Recipe


def _print(message: str) -> None:
    print(message)


@dataclass
class RunContext:
    """Shared state for one run.

    :param recipe: the validated recipe.
    :param run_dir: the run directory (``runs/<name>``); only the main process writes there.
    :param cache_dir: a cache shared between runs (tiny presets, encoded data), ``~/.cache/loraplug``
        unless ``LORAPLUG_CACHE`` says otherwise.
    :param smoke: ``--smoke``: the model was swapped for a tiny preset and steps capped.
    :param seed: the run's one seed.
    :param is_main_process: whether this process writes logs, checkpoints and exports.
    :param process_index: this process's rank.
    :param num_processes: how many processes train together.
    :param device: the ``torch.device`` the loop trains on, once known.
    :param info: print a line for the user (main process only).
    :param warn: print a warning for the user (main process only).
    :param load_prepared_data: how :meth:`prepared_data` gets the run's data; set by the core.
    :param final_metrics: the finished run's last training loss and last evaluation's scores
        (``{"train_loss": 0.24, "val_loss": 0.25, ...}``), for model cards; empty until training ends.
    :param load_deployable: how :meth:`deployable` builds a model's deployable view (the model's plugin's
        ``loraplug_deployable``); set by the core for exports.
    """

    recipe: Recipe
    run_dir: Path
    cache_dir: Path
    smoke: bool = False
    seed: int = 0
    is_main_process: bool = True
    process_index: int = 0
    num_processes: int = 1
    device: Any = None
    info: Callable[[str], None] = _print
    warn: Callable[[str], None] = _print
    extras: dict[str, Any] = field(default_factory=dict)
    load_prepared_data: Callable[[], PreparedData] | None = field(default=None, repr=False)
    final_metrics: dict[str, float] = field(default_factory=dict)
    load_deployable: Callable[[ModelBundle], Deployable] | None = field(default=None, repr=False)
    # Built deployables by id(model), with the model kept so the id cannot be reused. Contexts copied
    # with dataclasses.replace share this dict: one merge per run, whichever copy asks.
    _deployables: dict[int, tuple[ModelBundle, Deployable]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def prepared_data(self) -> PreparedData:
        """The run's prepared data (training and validation samples, ``collate``), for an export that
        measures figures on it. During a run it is the data just trained on; when a finished run is
        re-exported it is loaded again on the first call, which raises ``LoraplugError`` when the
        data files are gone."""
        from loraplug.errors import LoraplugError

        if self.load_prepared_data is None:
            raise LoraplugError(
                "This context has no run data", fix="Call prepared_data() from an export of a run"
            )
        return self.load_prepared_data()

    def deployable(self, model: ModelBundle) -> Deployable:
        """The trained ``model`` as one deployable module (:class:`loraplug.Deployable`), for exporters.

        Built by the plugin serving ``model.kind`` on the first call — the adapter merged, the merge
        checked against the trained model — and the same object is returned for every later export of
        the run: exporters must not modify it. Raises ``LoraplugError`` when the model's plugin offers
        no deployable view.
        """
        from loraplug.errors import LoraplugError

        built = self._deployables.get(id(model))
        if built is not None and built[0] is model:
            return built[1]
        if self.load_deployable is None:
            raise LoraplugError(
                "This context cannot build a deployable model",
                fix="Call deployable() from an export of a run",
            )
        deployable = self.load_deployable(model)
        self._deployables[id(model)] = (model, deployable)
        return deployable
