"""Every third-party module the repo imports comes from a distribution that pyproject.toml declares
(in `dependencies` or an extra), so a fresh `pip install -e '.[cpu,dev]'` can run all of it."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib

from tests.procs import ROOT

# our own top-level packages (and the test and benchmark trees)
LOCAL = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}


def _normalise(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return {_normalise(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in reqs}


def imported() -> dict[str, set[str]]:
    """Top-level third-party module -> the tracked files that import it."""
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    out: dict[str, set[str]] = {}
    for f in files:
        for node in ast.walk(ast.parse((ROOT / f).read_text(), f)):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in LOCAL and top != "__future__":
                    out.setdefault(top, set()).add(f)
    return out


def test_every_imported_distribution_is_declared():
    dists = importlib.metadata.packages_distributions()
    have = declared()
    missing = {}
    for module, files in imported().items():
        # an installed module maps to its distribution(s); one not installed here (an optional extra such
        # as `bench`'s vpdq) must be declared under its own name
        candidates = {_normalise(d) for d in dists.get(module, [module])}
        if not candidates & have:
            missing[module] = sorted(files)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
