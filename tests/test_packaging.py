"""What `pip install .` promises: `core` and `analysis` work with the base dependencies alone.

Every module of `core` and `analysis` is imported in a fresh interpreter, which must then hold
no Ray, MLflow or submitit (the `sweeps` and `cluster` extras); every third-party module their
source imports (read with `ast`, lazy imports inside functions included) must come from a base
dependency or one of theirs. `analysis` and `core.run.schema` must load no torch at all.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXTRAS_ONLY = ("ray", "mlflow", "submitit")

IMPORT_ALL = r"""
import importlib, importlib.metadata, json, sys
from pathlib import Path

repo = Path(sys.argv[1])
failed = {}
for package in sys.argv[2:]:
    root = repo / package
    for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
        if path.name == "__main__.py":  # runs a command line when imported
            continue
        parts = path.relative_to(repo).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        try:
            importlib.import_module(name)
        except Exception as err:
            failed[name] = repr(err)
tops = {name.partition(".")[0] for name in sys.modules}
print(json.dumps({"modules": sorted(tops), "failed": failed}))
"""


def _imported(*packages: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, str(REPO), *packages],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string ("ray[tune]>=2" -> "ray")."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement)[0]).lower()


def _closure(names: set[str]) -> set[str]:
    """`names` and everything they require (unconditional requirements), transitively."""
    from importlib.metadata import PackageNotFoundError, requires

    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            found = requires(name) or []
        except PackageNotFoundError:
            continue
        todo += [_name(r) for r in found if "extra ==" not in r]
    return seen


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _imports_in_source(*packages: str) -> set[str]:
    """The top-level names of every absolute import in the packages' source files."""
    names = set()
    for package in packages:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names |= {alias.name.partition(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.partition(".")[0])
    return names


@pytest.mark.slow
def test_core_and_analysis_import_without_the_extras():
    found = _imported("core", "analysis")
    assert found["failed"] == {}
    assert [m for m in EXTRAS_ONLY if m in found["modules"]] == []


def test_core_and_analysis_import_only_declared_distributions():
    from importlib.metadata import packages_distributions

    ours = {"core", "analysis", "sweeps", "cluster", "tests"}
    third_party = _imports_in_source("core", "analysis") - set(sys.stdlib_module_names) - ours
    owners = packages_distributions()
    assert sorted(m for m in third_party if m not in owners) == []  # each one installed
    allowed = _closure({_name(r) for r in _project()["dependencies"]})
    undeclared = {m: owners[m] for m in third_party if not {_name(d) for d in owners[m]} & allowed}
    assert undeclared == {}  # each from a base dependency, directly or through one of its own


def test_analysis_and_the_record_schema_load_no_torch():
    found = _imported("analysis", "core/run/schema.py")
    assert found["failed"] == {}
    assert "torch" not in found["modules"]


def test_the_extras_are_what_the_readme_says():
    project = _project()
    base = {_name(r) for r in project["dependencies"]}
    assert base == {
        "torch",
        "torchvision",
        "numpy",
        "pandas",
        "pyarrow",
        "matplotlib",
        "scipy",
        "pillow",
        "tqdm",
    }
    extras = {k: {_name(r) for r in v} for k, v in project["optional-dependencies"].items()}
    assert extras == {
        "sweeps": {"ray", "mlflow"},
        "cluster": {"ray", "mlflow", "submitit"},
        "test": {"pytest", "pytest-xdist", "ruff"},
    }
    assert "ray[tune,default]" in "".join(project["optional-dependencies"]["sweeps"])
    makefile = (REPO / "Makefile").read_text()
    assert "pip install -e '.[sweeps,cluster,test]'" in makefile


def _imported_modules(package: str) -> dict[str, set[str]]:
    """{file: the absolute modules it imports}, `from a import b` giving `a.b` (b may be a name)."""
    found = {}
    for path in sorted((REPO / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names |= {f"{node.module}.{alias.name}" for alias in node.names}
        found[str(path.relative_to(REPO))] = names
    return found


def _breaking(package: str, rule) -> list[str]:
    return [f"{f}: {m}" for f, ms in _imported_modules(package).items() for m in ms if rule(m)]


def _within(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_dependency_rules_of_docs_architecture():
    # cluster -> sweeps -> core, never the reverse; analysis reads files
    assert _breaking("core", lambda m: _within(m, "sweeps", "cluster", "analysis")) == []
    assert _breaking("sweeps", lambda m: _within(m, "cluster", "analysis")) == []
    assert _breaking("analysis", lambda m: _within(m, "sweeps", "cluster")) == []
    # analysis takes from core only the torch-free record schema
    assert _breaking("analysis", lambda m: _within(m, "core") and m != "core.run.schema") == []
    # the building blocks know nothing of the experiments that use them
    for block in ("models", "cloning", "optim", "metrics", "data", "theory"):
        assert _breaking(f"core/{block}", lambda m: _within(m, "core.experiments")) == []
