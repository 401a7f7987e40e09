"""Light modules stay light: the ingestion client, `drca --help`, `drca ingest --help` and the settings load
no torch, faiss, redis or fastapi, each checked in a fresh interpreter (what `sys.modules` holds after)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "faiss", "redis", "fastapi")


def _run(code: str) -> tuple[list[str], str]:
    """Run `code` in a fresh interpreter; the heavy modules it loaded, and what it printed before."""
    code += f"\nimport json, sys\nprint('LOADED', json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    printed, _, loaded = out.stdout.rpartition("LOADED ")
    return json.loads(loaded), printed


def _cli(*args: str) -> str:
    """`drca ARGS` through the root CLI, in-process (exit 0 expected)."""
    return (
        "import sys\nfrom cli.main import app\n"
        f"sys.argv = ['drca', *{list(args)!r}]\n"
        "try:\n    app()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
    )


@pytest.mark.parametrize(("what", "code", "shows"), [
    ("import service.ingest", "import service.ingest", ""),
    ("import service.settings", "import service.settings", ""),
    ("drca --help", _cli("--help"), "ingest"),
    ("drca ingest --help", _cli("ingest", "--help"), "--server"),
])
def test_loads_no_heavy_module(what: str, code: str, shows: str) -> None:
    loaded, printed = _run(code)
    assert shows in printed, printed[-2000:]
    assert loaded == [], f"{what} loaded {', '.join(loaded)}"


def test_drca_ingest_runs_without_the_heavy_modules(tmp_path: Path) -> None:
    """`drca ingest` with torch, faiss, redis and fastapi absent (imports of them fail) still hashes and
    uploads: against a port nothing listens on, each file fails with a connection error and the exit code
    is 1 (not 2 for a missing faiss, nor a traceback)."""
    (tmp_path / "a.mp4").write_bytes(b"not really a video")
    (tmp_path / "notes.txt").write_text("not a video name: never uploaded\n")
    with socket.socket() as s:  # a free port, closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        f"import sys\nfor m in {HEAVY!r}:\n    sys.modules[m] = None  # as if not installed\n"
        "from cli.main import app\n"
        f"sys.argv = ['drca', 'ingest', {str(tmp_path)!r}, '--server', 'http://127.0.0.1:{port}']\n"
        "try:\n    app()\nexcept SystemExit as e:\n    print('EXIT', e.code)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ingested 0, skipped 0 (already indexed), failed 1" in out.stdout, out.stdout + out.stderr[-2000:]
    assert "a.mp4: ConnectError" in out.stdout and "EXIT 1" in out.stdout, out.stdout
