"""Every library a distribution imports is installed by its own pyproject.toml.

A fresh `make install` pulls only what the pyproject files declare; a library that happens to be
in the developer's environment but is missing from `dependencies` passes every local run and
breaks the first clean install (it did: sacrebleu for the generation metrics). This test reads
each first-party pyproject.toml, follows the declared requirements through the installed
packages' own metadata, and checks every `import` in the distribution's package against it.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PROJECTS = [
    ROOT / "pyproject.toml",
    *sorted(ROOT.glob("plugins/*/pyproject.toml")),
    ROOT / "examples" / "loraplug-csv" / "pyproject.toml",
]

# Imports of a declared extra whose distribution is not installed here, so its module cannot be traced
# to it, with the reason.
OPTIONAL_IMPORTS: dict[str, dict[str, str]] = {
    "loraplug-causal-lm": {
        "liger_kernel": "the `liger` extra (liger-kernel): Triton kernels, imported on CUDA only and not installed on CI",
    },
}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def transitive_requirements(dist_name: str) -> frozenset[str]:
    """The installed distribution and everything its unconditional requirements pull in."""
    found = {normalise(dist_name)}
    try:
        requires = metadata.requires(dist_name) or []
    except metadata.PackageNotFoundError:
        return frozenset(found)
    for line in requires:
        requirement = Requirement(line)
        if requirement.marker and "extra" in str(requirement.marker):
            continue
        if requirement.marker and not requirement.marker.evaluate():
            continue
        found |= transitive_requirements(requirement.name)
    return frozenset(found)


def imported_top_level_modules(package_dir: Path) -> set[str]:
    names: set[str] = set()
    for source in package_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("project", PROJECTS, ids=[p.parent.name for p in PROJECTS])
def test_every_import_is_a_declared_dependency(project: Path) -> None:
    config = tomllib.loads(project.read_text())["project"]
    dist_name = normalise(config["name"])
    declared = list(config.get("dependencies", []))
    for extra in config.get("optional-dependencies", {}).values():
        declared += extra
    installable: set[str] = {dist_name}
    for line in declared:
        installable |= transitive_requirements(Requirement(line).name)

    package_dirs = [
        p.parent
        for p in project.parent.glob("*/__init__.py")
        if not p.parent.name.startswith(("tests", "build"))
    ]
    assert package_dirs, f"no package found next to {project}"
    own_modules = {p.name for p in package_dirs}
    module_owners = metadata.packages_distributions()
    optional = OPTIONAL_IMPORTS.get(dist_name, {})

    undeclared = []
    for module in sorted(set().union(*(imported_top_level_modules(p) for p in package_dirs))):
        if module in sys.stdlib_module_names or module in own_modules or module in optional:
            continue
        owners = {normalise(d) for d in module_owners.get(module, [])}
        if not owners & installable:
            undeclared.append(f"{module} (from {', '.join(sorted(owners)) or 'unknown'})")
    assert not undeclared, (
        f"{project.relative_to(ROOT)} imports libraries its dependencies do not install: "
        + "; ".join(undeclared)
    )
