"""Every third-party package that ``src/fedintel`` imports is declared in ``pyproject.toml``.

Import statements are read with ``ast`` (at any level, ``TYPE_CHECKING`` blocks included); each top-level
module is mapped to the distribution that installs it (``importlib.metadata.packages_distributions``). A
package of an optional extra (``gpu``, ``simulation``) may only be imported inside a function, so importing
fedintel never needs it; the ``dev`` extra (tests, linters) is not for ``src/``.
"""

from __future__ import annotations

import ast
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "fedintel"


def _declared() -> tuple[set[str], set[str]]:
    """(required, optional) distribution names, canonical."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    optional = {canonicalize_name(Requirement(r).name) for extra, reqs in project["optional-dependencies"].items()
                if extra != "dev" for r in reqs}
    return required, optional - required


def _imports() -> list[tuple[str, str, bool]]:
    """(top-level module, where, at module level) for every absolute import in src/fedintel."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        in_function = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                       for n in ast.walk(f) if n is not f}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "fedintel" and top not in sys.stdlib_module_names:
                    out.append((top, f"{path.relative_to(ROOT)}:{node.lineno}", id(node) not in in_function))
    return out


def test_every_third_party_import_is_declared():
    required, optional = _declared()
    dists = packages_distributions()
    problems = []
    for module, where, module_level in _imports():
        names = {canonicalize_name(d) for d in dists.get(module, [])}
        if not names:
            problems.append(f"{where}: {module} is not installed, so its distribution is unknown")
        elif not names & (required | optional):
            problems.append(f"{where}: {module} ({', '.join(sorted(names))}) is not declared in pyproject.toml")
        elif not names & required and module_level:
            problems.append(f"{where}: {module} is an optional extra's package: import it inside the function")
    assert problems == [], "\n".join(problems)


def test_the_check_sees_imports_at_every_level():
    found = {(m, level) for m, _, level in _imports()}
    assert ("torch", True) in found and ("tomli_w", True) in found and ("psutil", True) in found
    assert ("huggingface_hub", False) in found  # imported inside a function of models/loader.py
