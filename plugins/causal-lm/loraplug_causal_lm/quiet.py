"""Keep transformers' and peft's progress bars and deprecation chatter out of loraplug's own output."""

from __future__ import annotations

import loraplug_hf


def quiet_libraries() -> None:
    # bitsandbytes' LLM.int8 logs "inputs will be cast to float16" on every forward pass of a float32 model.
    loraplug_hf.quiet_libraries("transformers", "peft", loggers=("bitsandbytes.autograd._functions",))
