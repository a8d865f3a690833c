"""``loraplug studio``: a local web UI over loraplug's public API (docs/studio.md)."""
