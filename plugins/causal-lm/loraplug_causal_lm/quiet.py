"""Keep the libraries' progress bars and deprecation chatter out of loraplug's own output."""

from __future__ import annotations

import logging
import os
import warnings
from functools import cache


@cache
def quiet_libraries() -> None:
    if os.environ.get("LORAPLUG_DEBUG", "") not in ("", "0"):
        return
    # torchao (imported by peft when installed) logs a warning per enum it registers with torch.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"peft\..*")
    # bitsandbytes' LLM.int8 logs "inputs will be cast to float16" on every forward pass of a float32 model.
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
