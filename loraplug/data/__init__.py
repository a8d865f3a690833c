"""Data tools every loader gets from the core: cleaning (``[data.clean]``) with a report, and
weighted sampling (``data.balance_by`` / ``data.weight_by``).

Model plugins use :func:`token_limit` to apply the token-length filter with their tokenizer.
"""

from loraplug.bundles import record_text
from loraplug.data.clean import TokenLimit, clean, token_limit
from loraplug.data.filters import normalise, require_text
from loraplug.data.options import CORE_DATA_KEYS, CleanOptions, DataCoreOptions
from loraplug.data.report import DataReport

__all__ = [
    "CORE_DATA_KEYS",
    "CleanOptions",
    "DataCoreOptions",
    "DataReport",
    "TokenLimit",
    "clean",
    "normalise",
    "record_text",
    "require_text",
    "token_limit",
]
