"""Keep libraries' deprecation chatter out of loraplug's own output, unless the user is debugging.

Plugins call :func:`loraplug.toolkit.quiet_libraries` before importing the heavy libraries: it calls
:func:`silence_warnings` and turns off transformers' and diffusers' progress bars and log levels.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable


def debugging() -> bool:
    """``LORAPLUG_DEBUG=1``: show every warning and traceback."""
    return os.environ.get("LORAPLUG_DEBUG", "") not in ("", "0")


def silence_warnings(modules: Iterable[str], loggers: Iterable[str] = ()) -> bool:
    """Ignore FutureWarning and UserWarning raised from ``modules`` (regular expressions) and log only
    errors from ``loggers``. Returns False, silencing nothing, while debugging."""
    if debugging():
        return False
    for module in modules:
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=UserWarning, module=module)
    # torchao (imported by peft when installed) logs a warning per enum it registers with torch.
    for name in ("torch.utils._pytree", *loggers):
        logging.getLogger(name).setLevel(logging.ERROR)
    return True
