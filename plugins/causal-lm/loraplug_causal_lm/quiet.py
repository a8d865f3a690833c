"""Keep transformers' and peft's progress bars and deprecation chatter out of loraplug's own output."""

from __future__ import annotations

from functools import cache

from loraplug.quiet import silence_warnings


@cache
def quiet_libraries() -> None:
    # bitsandbytes' LLM.int8 logs "inputs will be cast to float16" on every forward pass of a float32 model.
    if not silence_warnings((r"transformers\..*", r"peft\..*"), loggers=("bitsandbytes.autograd._functions",)):
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
