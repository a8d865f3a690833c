"""The files of a model: from a local directory, or from the Hugging Face Hub (its cache first).

One error for both kinds when they cannot be had — offline (``HF_HUB_OFFLINE=1``) with nothing cached
is the usual case — saying what to download and which option takes its directory.
"""

from __future__ import annotations

from pathlib import Path

from loraplug import LoraplugError


def not_available(pretrained: str, files: tuple[str, ...], reason: str, kind: str) -> LoraplugError:
    """The error for a model that is neither a local directory holding ``files`` nor on the Hub."""
    names = " ".join(files)
    return LoraplugError(
        f"Could not load the {kind} captioning model {pretrained!r}: {reason}",
        where="--option pretrained",
        fix="It is not a local directory and could not be fetched from the Hugging Face Hub (offline, "
        "HF_HUB_OFFLINE=1, or a typo). On a machine with network run "
        f"`hf download {pretrained} {names} --local-dir DIR`, then pass `--option pretrained=DIR` "
        "(docs/captioning.md)",
    )


def model_files(pretrained: str, files: tuple[str, ...], kind: str) -> dict[str, Path]:
    """``files`` of ``pretrained`` — a local directory (made absolute by the options), or a Hub
    repository read through huggingface_hub's cache — by name."""
    local = Path(pretrained)
    if local.is_dir():
        missing = [name for name in files if not (local / name).is_file()]
        if missing:
            raise LoraplugError(
                f"The {kind} model directory {local} has no {', '.join(missing)}",
                where="--option pretrained",
                fix=f"Point it at a directory holding {', '.join(files)} (the layout of {kind}'s Hub repositories)",
            )
        return {name: local / name for name in files}
    from huggingface_hub import hf_hub_download

    found = {}
    for name in files:
        try:
            found[name] = Path(hf_hub_download(pretrained, name))
        except (OSError, ValueError) as exc:  # the Hub's errors are OSErrors; a bad repo id a ValueError
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise not_available(pretrained, files, reason, kind) from exc
    return found
