"""The package layers (docs/architecture.md): every import of every module, read with `ast`, must follow
an allowed edge, and `drca train | synth | flops | eval | media` must not load the service."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: package -> the packages of ours it may import (itself always allowed). `cli` is the root: anything.
ALLOWED: dict[str, set[str]] = {
    "model": set(),
    "media": {"model"},
    "indexer": set(),
    "training": {"model", "media"},
    "service": {"model", "media", "indexer"},
    "cli": {"model", "media", "indexer", "training", "service"},
    # benchmarks measure the packages through their public entry points (no `_private` module or name);
    # the multi-process ones start gateways and workers with the test harness (tests/procs.py)
    "benchmarks": {"model", "media", "indexer", "training", "service", "tests"},
}
OURS = set(ALLOWED) | {"tests"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) for every import statement, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name, []) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            out.append((node.lineno, module, [a.name for a in node.names]))
    return out


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "work" not in p.relative_to(ROOT).parts)


def _violations(package: str) -> list[str]:
    bad = []
    for path in _modules(package):
        rel = path.relative_to(ROOT)
        for line, module, names in _imports(path):
            target = module.split(".")[0]
            if target not in OURS or target == package:
                continue
            if target not in ALLOWED[package]:
                bad.append(f"{rel}:{line}: {package} -> {target} (import {module}) is not an allowed edge")
            private = [p for p in module.split(".")[1:] + names if p.startswith("_") and p != "__version__"]
            if private:
                bad.append(f"{rel}:{line}: {package} -> {module} imports private {', '.join(private)}")
    return bad


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_follow_the_layers(package: str) -> None:
    assert _modules(package), f"no modules found for {package}"
    bad = _violations(package)
    assert not bad, "forbidden imports:\n" + "\n".join(bad)


def test_every_package_is_covered() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages == set(ALLOWED), f"packages without a layer rule: {sorted(packages - set(ALLOWED))}"


def test_the_check_names_the_edge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker itself can fail: a model module importing the service is reported with its edge."""
    fake = tmp_path / "model"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "bad.py").write_text("def f():\n    from service.settings import Settings\n    from indexer.index import _x\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    bad = _violations("model")
    assert any("model/bad.py:2: model -> service" in b for b in bad), bad
    assert any("model -> indexer" in b for b in bad) and any("private _x" in b for b in bad), bad


# the commands of the model and training packages, and the modules they run (lazily imported ones included)
COMMANDS = {
    "flops": ["flops", "--help"],
    "synth": ["synth", "--help"],
    "media": ["media", "fetch-real", "--help"],
    "train": ["train", "classify", "--help"],
    "eval": ["eval", "classify", "--help"],
}
COMMAND_MODULES = [
    "model.cli", "model.flops", "training.cli", "training.data.cli", "training.classify", "training.retrieval",
    "training.text", "training.shipped", "training.evaluate", "training.data.synth", "training.data.real",
]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_training_commands_do_not_load_the_service(command: str) -> None:
    """`drca <command>` through the root CLI, then every module those commands run, in a fresh interpreter:
    no `service` module may be loaded."""
    code = (
        "import importlib, sys\n"
        "from cli.main import app\n"
        f"sys.argv = ['drca', *{COMMANDS[command]!r}]\n"
        "try:\n    app()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        f"for m in {COMMAND_MODULES!r}:\n    importlib.import_module(m)\n"
        "loaded = sorted(m for m in sys.modules if m == 'service' or m.startswith('service.'))\n"
        "print('SERVICE:', loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "SERVICE: []" in out.stdout, f"drca {command} loaded service modules: {out.stdout.strip()}"


def test_service_commands_still_resolve() -> None:
    """The lazily wired service commands are there (and do load the service)."""
    code = (
        "import sys\nfrom cli.main import app\nsys.argv = ['drca', 'serve', '--help']\n"
        "try:\n    app()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "assert 'service.cli' in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--redis" in out.stdout
