"""Every figure the docs quote from a benchmark results JSON matches that JSON.

The convention (README.md and docs/*.md): a passage that quotes measured figures from a results file is
wrapped in two HTML comments, which Markdown does not render,

    <!-- results: benchmarks/results/service.json -->
    | measurement | result |
    |---|---|
    | decode only | 16.1 videos/s |
    <!-- /results -->

and the passage names the file in its text as well, for readers. Inside the markers every number must be
a number of that JSON (any leaf, at the precision the doc prints it; a `%` figure may also be a fraction
in the JSON, and `N×`/`Nx` may be a ratio of two of its numbers). Not checked: text in backticks
(commands, presets), and in tables the header row and the first column (the row's label). A derived
figure that is in no JSON belongs outside the markers, with the formula next to it.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from tests.procs import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RESULTS_DIR = ROOT / "benchmarks" / "results"
BLOCK = re.compile(r"<!-- results: (?P<file>\S+) -->(?P<body>.*?)<!-- /results -->", re.S)
# a number that is not part of a word, a version (2.13.0), a name (drca-cpu-112), a size (16×16) or a
# compound (8-frame, 2-core); with its unit tail
NUMBER = re.compile(r"(?<![\w.\-/×])(\d+(?:,\d{3})*(?:\.\d+)?)(?![\w.×]*\d|-[A-Za-z])(\s*(?:%|×|x\b))?")


@dataclass(frozen=True)
class Figure:
    doc: str
    line: int
    text: str
    value: float
    decimals: int
    unit: str  # "", "%" or "x"


@cache
def leaves(path: Path) -> tuple[float, ...]:
    out: list[float] = []

    def walk(x: object) -> None:
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, int | float) and not isinstance(x, bool):
            out.append(float(x))

    walk(json.loads(path.read_text()))
    return tuple(out)


def _strip_code(text: str) -> str:
    return re.sub(r"`[^`\n]*`", lambda m: " " * len(m.group(0)), text)


def _checked_text(body: str) -> list[tuple[int, str]]:
    """(line offset, text to check) of a block: tables lose their header row and first column."""
    lines = body.split("\n")
    out = []
    for i, line in enumerate(lines):
        if line.lstrip().startswith("|"):
            cells = line.strip().strip("|").split("|")
            is_rule = all(re.fullmatch(r"\s*:?-+:?\s*", c) for c in cells)
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            is_header = bool(re.fullmatch(r"\s*\|(\s*:?-+:?\s*\|)+\s*", nxt))
            if is_rule or is_header:
                continue
            out.append((i, " | ".join(cells[1:])))
        else:
            out.append((i, line))
    return out


def figures(doc: Path, body: str, first_line: int) -> list[Figure]:
    out = []
    for offset, text in _checked_text(_strip_code(body)):
        for m in NUMBER.finditer(text):
            raw = m.group(1).replace(",", "")
            unit = (m.group(2) or "").strip().replace("×", "x")
            decimals = len(raw.split(".")[1]) if "." in raw else 0
            out.append(Figure(doc.name, first_line + offset, m.group(0).strip(), float(raw), decimals, unit))
    return out


def matches(fig: Figure, values: tuple[float, ...]) -> bool:
    tol = 0.5 * 10 ** -fig.decimals + 1e-9

    def close(v: float) -> bool:
        return abs(v - fig.value) <= tol

    if any(close(v) for v in values):
        return True
    if fig.unit == "%" and any(close(100 * v) for v in values):
        return True
    if fig.unit == "x":
        return any(b and close(a / b) for a, b in itertools.permutations(set(values), 2))
    return False


def blocks() -> list[tuple[Path, str, str, int]]:
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for m in BLOCK.finditer(text):
            out.append((doc, m.group("file"), m.group("body"), text.count("\n", 0, m.start("body")) + 1))
    return out


def test_docs_quote_results_with_the_convention():
    """Every results JSON is quoted somewhere, inside markers; every marker names an existing results file."""
    found = blocks()
    assert found, "no <!-- results: ... --> blocks in the docs"
    named = set()
    for doc, file, body, line in found:
        path = ROOT / file
        assert path.parent == RESULTS_DIR and path.exists(), f"{doc.name}:{line}: no results file {file}"
        assert file in body or file in doc.read_text(), f"{doc.name}:{line}: the text never names {file}"
        assert figures(doc, body, line), f"{doc.name}:{line}: a results block with no figures"
        named.add(path.name)
    unquoted = {p.name for p in RESULTS_DIR.glob("*.json")} - named
    assert not unquoted, f"results files that no doc quotes inside <!-- results: --> markers: {unquoted}"


@pytest.mark.parametrize(("doc", "file", "body", "line"), blocks(),
                         ids=lambda x: x.name if isinstance(x, Path) else None)
def test_quoted_figures_match_their_results_json(doc, file, body, line):
    values = leaves(ROOT / file)
    wrong = [f"{f.doc}:{f.line}: {f.text!r}" for f in figures(doc, body, line) if not matches(f, values)]
    assert not wrong, f"figures not in {file} (stale, or derived: move them out of the markers): {wrong}"


def test_the_check_catches_a_stale_figure(tmp_path):
    """The matcher itself: a figure off by one unit in its last digit is refused, rounding is accepted."""
    results = tmp_path / "r.json"
    results.write_text(json.dumps({"a": {"qps": 17.200163, "eff": 0.6272, "rounds": [6.81, 3.40]}}))
    values = leaves(results)
    doc = Path("x.md")
    good = figures(doc, "| label 99 | 17.2 QPS, 63 %, 6.81, 2.0×, an 8-frame 16×16 clip of `drca-cpu 9` |", 1)
    assert [f.text for f in good] == ["17.2", "63 %", "6.81", "2.0×"]
    assert all(matches(f, values) for f in good)
    for stale in ("17.3 QPS", "64 %", "6.8 (`--threads 2`) 6.82", "2.1×"):
        assert not all(matches(f, values) for f in figures(doc, stale, 1)), stale
