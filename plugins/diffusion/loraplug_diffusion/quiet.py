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
    for module in (r"diffusers\..*", r"transformers\..*", r"peft\..*"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=UserWarning, module=module)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
