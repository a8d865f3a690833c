"""The `loraplug` command line."""
