"""Keep diffusers', transformers' and peft's progress bars and deprecation chatter out of loraplug's own output."""

from __future__ import annotations

import loraplug_hf


def quiet_libraries() -> None:
    loraplug_hf.quiet_libraries("diffusers", "transformers", "peft")
