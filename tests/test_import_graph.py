"""The import graph of loraplug and its first-party plugins, read from the source (ast), checked by rules.

Every module of ``loraplug/`` and of each first-party plugin's package is parsed, with its imports at
any depth (a function-level import makes a cycle as surely as a top-level one, only later), and the
rules below are checked on that graph. Each rule is a small function over :data:`GRAPH`; add one the
same way (e.g. "no plugin imports another plugin": :func:`plugin_of` tells whose a module is).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).parents[1]
CORE = "loraplug"


@dataclass(frozen=True)
class Module:
    name: str  # dotted: loraplug.cli.main, loraplug_webdataset.pack
    path: Path
    #: The first-party plugin (its directory under plugins/) this module belongs to; None for the core.
    plugin: str | None


def _packages() -> Iterator[tuple[Path, str | None]]:
    """(package directory, plugin name) for the core and each first-party plugin's importable package."""
    yield ROOT / CORE, None
    for plugin in sorted(p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").is_file()):
        for package in sorted(p for p in plugin.iterdir() if (p / "__init__.py").is_file()):
            yield package, plugin.name


@cache
def modules() -> dict[str, Module]:
    """Every module of the core and the first-party plugins, by dotted name (tests/ are not modules)."""
    found: dict[str, Module] = {}
    for package, plugin in _packages():
        for path in sorted(package.rglob("*.py")):
            parts = path.relative_to(package.parent).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = Module(name, path, plugin)
    return found


def _imported_names(module: Module) -> Iterator[str]:
    """The dotted names ``module`` imports, at any depth (relative imports resolved)."""
    tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
    package = module.name if module.path.name == "__init__.py" else module.name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            # `from loraplug.cli import main` imports the module loraplug.cli.main.
            yield from (f"{base}.{alias.name}" for alias in node.names)


@cache
def graph() -> dict[str, frozenset[str]]:
    """Module → the modules of the core and first-party plugins it imports (itself excluded)."""
    known = modules()
    return {
        name: frozenset(
            imported for imported in _imported_names(module) if imported in known and imported != name
        )
        for name, module in known.items()
    }


def plugin_of(name: str) -> str | None:
    """The first-party plugin whose module ``name`` is; None for the core."""
    return modules()[name].plugin


def cycles(imports: Mapping[str, Iterable[str]], within: set[str]) -> list[list[str]]:
    """The import cycles among the modules ``within`` (each as a path that returns to its start)."""
    edges = {name: [t for t in sorted(imports[name]) if t in within] for name in sorted(within)}
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for target in edges[name]:
            if state.get(target) == 1:
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[name] = 2

    for name in edges:
        if name not in state:
            visit(name)
    return found


# -- rules ----------------------------------------------------------------------------------------


def test_every_module_is_found_and_parsed() -> None:
    names = modules()
    assert {"loraplug.cli.main", "loraplug.cli.export", "loraplug.cli.runs", "loraplug.run"} <= names.keys()
    assert {plugin_of(n) for n in names} >= {
        None,
        "causal-lm",
        "diffusion",
        "webdataset",
        "onnx",
        "quant",
        "wandb",
    }
    assert graph()["loraplug.cli.main"] >= {"loraplug.cli.export", "loraplug.cli.runs"}


def test_the_cli_has_no_import_cycle() -> None:
    cli = {name for name in modules() if name == "loraplug.cli" or name.startswith("loraplug.cli.")}
    assert cycles(graph(), cli) == [], (
        "loraplug.cli imports in a circle; move what both sides need into loraplug.cli.shared"
    )


def test_no_first_party_plugin_imports_the_cli() -> None:
    """A plugin uses the public API (loraplug.load_plugins(), PluginHost.warn_broken), never the CLI's internals."""
    offenders = sorted(
        f"{name} imports {imported}"
        for name, imports in graph().items()
        if plugin_of(name) is not None
        for imported in imports
        if imported == "loraplug.cli" or imported.startswith("loraplug.cli.")
    )
    assert offenders == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The rules above can fail: a graph with a circle is reported as one."""
    circle = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(circle, {"a", "b", "c", "d"}) == [["a", "b", "c", "a"]]
    assert cycles(circle, {"a", "b", "d"}) == []


def test_every_module_imports() -> None:
    """Each module of the core and the installed first-party plugins imports (one fresh interpreter)."""
    names = sorted(n for n in modules() if not n.endswith("__main__"))
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code, *names], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_test_only_fault_injection_stays_out_of_the_training_loop() -> None:
    """LORAPLUG_FAULT's faults reach the loop as events a run installs, never as branches in it."""
    importers = sorted(name for name, imports in graph().items() if "loraplug.training.faults" in imports)
    assert importers == ["loraplug.run"]


# -- no first-party plugin imports another's modules ----------------------------------------------


def plugin_packages(roots: Iterable[Path]) -> dict[str, Path]:
    """Each shipped package (a directory with ``__init__.py``, tests excluded) of the plugins under ``roots``
    (each a directory of plugin projects, one per subdirectory), by its import name → its plugin project."""
    found: dict[str, Path] = {}
    for root in roots:
        for project in sorted(p for p in root.iterdir() if _is_plugin(p)):
            for package in sorted(p for p in project.iterdir() if (p / "__init__.py").is_file()):
                if package.name not in ("tests", "build"):
                    found[package.name] = project
    return found


def _is_plugin(project: Path) -> bool:
    """A project with a ``loraplug`` entry point. A library beside the plugins (``loraplug-hf``: the
    Hugging Face half of the toolkit, no kinds) is no plugin: plugins may depend on it."""
    pyproject = project / "pyproject.toml"
    if not pyproject.is_file():
        return False
    entry_points = (
        tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {}).get("entry-points", {})
    )
    return "loraplug" in entry_points


def cross_plugin_imports(roots: Iterable[Path]) -> list[str]:
    """``file imports module`` for every import, at any depth, of one plugin's module by another plugin's
    shipped code (each .py of its packages, parsed with ast). A plugin's tests are not scanned: they may
    train a run through another plugin's test helpers (the onnx tests export a tiny causal LM)."""
    packages = plugin_packages(roots)
    offenders = []
    for name, project in packages.items():
        for path in sorted((project / name).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    imported = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported = [node.module]
                else:
                    continue
                for module in imported:
                    owner = packages.get(module.split(".")[0])
                    if owner is not None and owner != project:
                        offenders.append(f"{path.relative_to(project.parent.parent)} imports {module}")
    return offenders


def test_no_first_party_plugin_imports_another_plugins_modules() -> None:
    """Plugins meet only through loraplug's public API: an exporter gets a model kind's merged module from
    ctx.deployable(model), never from the model's plugin, so it serves every model kind installed."""
    shipped = plugin_packages([ROOT / "plugins"])
    assert shipped.keys() >= {"loraplug_causal_lm", "loraplug_onnx", "loraplug_quant"}
    assert cross_plugin_imports([ROOT / "plugins", ROOT / "examples"]) == []


def test_the_cross_plugin_scan_finds_an_import_at_any_depth(tmp_path: Path) -> None:
    """The rule above can fail: an import of another plugin's module inside a function is found."""
    for project, package, source in [
        ("exporter", "plugin_exporter", "def export():\n    from plugin_model.merge import merged\n"),
        ("model", "plugin_model", "import os\nfrom plugin_model import merge\n"),
    ]:
        (tmp_path / project / package).mkdir(parents=True)
        (tmp_path / project / "pyproject.toml").write_text(
            f'[project.entry-points.loraplug]\n{package} = "{package}"\n'
        )
        (tmp_path / project / package / "__init__.py").write_text(source)
        (tmp_path / project / "tests").mkdir()
        (tmp_path / project / "tests" / "__init__.py").write_text("import plugin_exporter, plugin_model\n")
    offenders = cross_plugin_imports([tmp_path])
    assert offenders == [f"{tmp_path.name}/exporter/plugin_exporter/__init__.py imports plugin_model.merge"]


# -- first-party plugins use only loraplug's public API ------------------------------------------

#: The modules of loraplug a plugin's shipped code may import (docs/plugins.md): the top level, the toolkit,
#: and loraplug.testing from a module named testing.py (a plugin's test helpers). loraplug_hf is a library.
PUBLIC_MODULES = ("loraplug", "loraplug.toolkit")


def private_imports(roots: Iterable[Path], public_names: Iterable[str]) -> list[str]:
    """``file imports name`` for every import, at any depth, by a plugin's shipped code of a part of loraplug
    that is not its public API: a module other than :data:`PUBLIC_MODULES` (``loraplug.testing`` allowed in
    testing.py), or a name from ``loraplug`` that is not in ``public_names`` (its ``__all__``, plus the public
    submodules), e.g. ``from loraplug import rundir``."""
    public = set(public_names) | {"toolkit"}
    offenders = []
    for name, project in plugin_packages(roots).items():
        for path in sorted((project / name).rglob("*.py")):
            helpers = path.name == "testing.py"
            allowed = {*PUBLIC_MODULES, "loraplug.testing"} if helpers else set(PUBLIC_MODULES)
            names = public | {"testing"} if helpers else public
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    imported = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported = [node.module]
                    if node.module == CORE:  # `from loraplug import rundir` imports a private module
                        imported += [f"{CORE}.{a.name}" for a in node.names if a.name not in names]
                else:
                    continue
                offenders += [
                    f"{path.relative_to(project.parent.parent)} imports {module}"
                    for module in imported
                    if module.split(".")[0] == CORE and module not in allowed
                ]
    return offenders


def test_first_party_plugins_import_only_loraplugs_public_api() -> None:
    """A plugin author's new model kind needs no copied helper and no private module: loraplug's own
    plugins and the example plugin get by with what docs/plugins.md documents."""
    import loraplug

    assert private_imports([ROOT / "plugins", ROOT / "examples"], loraplug.__all__) == []


def test_the_public_api_scan_finds_a_private_import(tmp_path: Path) -> None:
    """The rule above can fail: private modules and names are found at any depth; the public ones and
    loraplug.testing in testing.py pass."""
    sources = {
        "__init__.py": "from loraplug import Options, toolkit\nfrom loraplug.toolkit import cache_dir\n",
        "write.py": "def write():\n    from loraplug.rundir import atomic_dir\n    import loraplug.safety\n",
        "names.py": "from loraplug import Options, rundir\n",
        "testing.py": "from loraplug.testing import run_cli\nfrom loraplug import testing\n",
        "helpers.py": "from loraplug.testing import run_cli\n",
    }
    package = tmp_path / "model" / "plugin_model"
    package.mkdir(parents=True)
    (tmp_path / "model" / "pyproject.toml").write_text(
        '[project.entry-points.loraplug]\nm = "plugin_model"\n'
    )
    for file, source in sources.items():
        (package / file).write_text(source)
    where = f"{tmp_path.name}/model/plugin_model"
    assert sorted(private_imports([tmp_path], ["Options"])) == [
        f"{where}/helpers.py imports loraplug.testing",
        f"{where}/names.py imports loraplug.rundir",
        f"{where}/write.py imports loraplug.rundir",
        f"{where}/write.py imports loraplug.safety",
    ]


#: Libraries of a modality (or its exports) that only plugins may import.
MODALITY_LIBRARIES = (
    "transformers",
    "diffusers",
    "tokenizers",
    "webdataset",
    "onnx",
    "onnxruntime",
    "bitsandbytes",
    "torchao",
)


def test_the_core_imports_no_modality_library_not_even_inside_a_function() -> None:
    offenders = []
    for path in sorted((ROOT / "loraplug").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            offenders += [
                f"{path.relative_to(ROOT)} imports {n}"
                for n in names
                if n.split(".")[0] in MODALITY_LIBRARIES
            ]
    assert offenders == []
