"""Keep diffusers', transformers' and peft's progress bars and deprecation chatter out of loraplug's own output."""

from __future__ import annotations

from functools import cache

from loraplug.quiet import silence_warnings


@cache
def quiet_libraries() -> None:
    if not silence_warnings((r"diffusers\..*", r"transformers\..*", r"peft\..*")):
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
