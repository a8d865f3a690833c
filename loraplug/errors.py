"""Errors a user can act on.

Every failure a person can fix is raised as a :class:`LoraplugError`. The CLI prints it as one
paragraph — what went wrong, where, how to fix it — with no traceback unless ``--debug``, and exits
non-zero. Anything else that escapes is a bug in loraplug or a plugin, and is reported as such.
"""

from __future__ import annotations

import sys
from pathlib import Path


class LoraplugError(Exception):
    """A failure the user can fix.

    :param what: what went wrong, as a sentence.
    :param where: the file, line, key or sample it concerns.
    :param fix: what to do about it.
    """

    exit_code = 2

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.where = where
        self.fix = fix

    def paragraph(self) -> str:
        """The error as the one paragraph the CLI prints."""
        parts = [self.what.rstrip(".") + "."]
        if self.where:
            parts.append(f"Where: {self.where}.")
        if self.fix:
            parts.append(self.fix.rstrip(".") + ".")
        return " ".join(parts)

    def __str__(self) -> str:
        return self.paragraph()


def model_load_error(
    what: str, pretrained: str, source: str | Path, exc: Exception, *, layout: str, preset: str
) -> LoraplugError:
    """The error for a base model that did not load, for every model plugin alike.

    :param what: the kind of model ("model", "Stable Diffusion model").
    :param pretrained: ``model.pretrained`` as the user wrote it; ``source`` is what was loaded.
    :param layout: what a local directory must hold, for the fix.
    :param preset: the tiny preset ``--smoke`` swaps in.
    """
    first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
    if Path(source).exists():
        fix = f"Check that the directory holds {layout}"
    else:
        fix = (
            "It is not a local directory and could not be fetched from the Hugging Face Hub (offline, "
            "HF_HUB_OFFLINE=1, a typo, or a gated model without a token). Download it and set model.pretrained "
            f"to its directory, or try the recipe with --smoke (the {preset} preset)"
        )
    return LoraplugError(
        f"Could not load the {what} {pretrained!r}: {first_line}", where="model.pretrained", fix=fix
    )


def path_error(exc: OSError) -> LoraplugError:
    """A filesystem refusal on a path the user gave or pointed loraplug at (a name too long, no
    permission, a full disk, a path through a file): the system's own reason, with the path.

    The CLI turns every :class:`OSError` that names a file into this paragraph, so no path a user can
    type ends in "unexpected error"; one that names no file is still reported as a bug.
    """
    name = exc.filename if exc.filename2 is None else f"{exc.filename} → {exc.filename2}"
    return LoraplugError(
        f"The system refused a file operation: {exc.strerror or exc}",
        where=str(name),
        fix="Check that path: its length, that each part of it is a directory, its permissions, and the free space on its disk",
    )


class RecipeError(LoraplugError):
    """A recipe that does not validate; carries every problem found, not just the first."""

    def __init__(
        self, source: str, problems: list[str], *, subject: str | None = None, fix: str | None = None
    ) -> None:
        self.source = source
        self.problems = problems
        count = "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
        super().__init__(
            f"{subject or f'The recipe {source}'} has {count}:\n" + "\n".join(f"  - {p}" for p in problems),
            fix=fix
            or "Fix the recipe (or the override) and run `loraplug recipe check` again; docs/recipes.md lists every key",
        )

    def paragraph(self) -> str:
        return f"{self.what}\n{self.fix}."


class PluginError(LoraplugError):
    """A plugin that is missing, ambiguous, broken or that broke its hook contract."""


#: What gloo and NCCL say when the process at the other end of a collective has gone.
_PEER_GONE = (
    "Connection closed by peer",
    "Connection reset by peer",
    "remote worker crashing",
    "Broken pipe",
)


def lost_peer(raised: BaseException) -> LoraplugError | None:
    """The error of a process whose collective failed because another process of the same run stopped
    first (its own error, shown by it, says why); ``None`` when ``raised`` is anything else.

    Without this, the one process that failed for a reason prints it, and every other process adds an
    "unexpected error" about a closed connection — a bug report for what is only a consequence."""
    torch = sys.modules.get("torch")  # a process that never imported torch ran no collective
    if torch is None or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return None
    if not any(marker in str(raised) for marker in _PEER_GONE):
        return None
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return LoraplugError(
        f"Process {rank} of {world} stopped because another process of this run stopped first",
        where="the other processes' output (the launcher's log) shows that process's own error",
        fix="Fix what that process reported, then continue with `loraplug run RECIPE --resume` (or start again)",
    )
