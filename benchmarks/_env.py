"""Shared by every benchmark: what machine and versions produced a result, and the JSON writer."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(
    packages: tuple[str, ...] = ("torch", "numpy", "decord", "faiss-cpu", "fastapi"),
) -> dict[str, Any]:
    versions = {}
    for name in packages:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "load_average_at_start": load,
    }


def write_result(name: str, results: dict[str, Any], out: str | Path | None = None) -> Path:
    """Write results + environment + the exact command to benchmarks/results/<name>.json (or `out`)."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "command": "python -m benchmarks."
        + name
        + (" " + shlex.join(sys.argv[1:]) if len(sys.argv) > 1 else ""),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(),
        "results": results,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path
