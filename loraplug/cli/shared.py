"""What every CLI command shares: the consoles and the process's plugins.

The command modules (main, export, runs) import it; it imports none of them, so the CLI has no
import cycle. Plugins never import ``loraplug.cli``: they use :func:`loraplug.load_plugins` and
:meth:`~loraplug.plugins.PluginHost.warn_broken` instead.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from loraplug.plugins import PluginHost, load_plugins

# soft_wrap: long paths stay on one line when output goes to a file or a CI log.
console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def host() -> PluginHost:
    """The process's plugins, loaded once (:func:`loraplug.load_plugins`)."""
    return load_plugins()


def warn_broken_plugins() -> None:
    """Name each plugin that failed to load, on stderr (the command goes on without it)."""
    host().warn_broken(lambda message: err_console.print(f"[yellow]warning:[/] {escape(message)}"))
