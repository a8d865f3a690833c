"""Keep diffusers', transformers' and peft's progress bars and deprecation chatter out of loraplug's own output."""

from __future__ import annotations

from loraplug import toolkit


def quiet_libraries() -> None:
    toolkit.quiet_libraries("diffusers", "transformers", "peft")
