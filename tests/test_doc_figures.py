"""Every figure the docs quote from a benchmark results JSON is the value at the JSON path it names.

The convention (README.md and docs/*.md): a passage that quotes measured figures from a results file is
wrapped in two HTML comments, which Markdown does not render, and each figure in it is written right after
a comment naming the path of its value in that JSON (`@` then keys joined by `.`, list items as `[i]`, a
key with a dot or a space in brackets and quotes: `@videos["a.avi"].mAP`):

    <!-- results: benchmarks/results/service.json -->
    | measurement | result |
    |---|---|
    | decode only | <!-- @results.median.decode_videos_per_s -->6.25 videos/s |
    <!-- /results -->

The passage names the file in its text as well, for readers. A figure must equal its value at the precision
the doc prints it (6.25 for 6.2468); a `%` figure may also be 100 times a fraction; an `N×`/`Nx` figure is
a ratio: the path of the ratio itself, or of its two terms, `<!-- @a / @b -->1.51×`. Every figure inside the markers needs its path (a
figure without one fails, naming it), and every path must exist. Not checked: text in backticks (commands,
presets), and in tables the header row and the first column (the row's label). A derived figure that is in
no JSON belongs outside the markers, with the formula next to it.
"""

from __future__ import annotations

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
# a number that is not part of a word, a version (2.13.0), a name (drca-cpu-112, R@1), a size (16×16) or a
# compound (8-frame, 2-core); with its unit tail
NUMBER = re.compile(r"(?<![\w.\-/×@])(\d+(?:,\d{3})*(?:\.\d+)?)(?![\w.×]*\d|-[A-Za-z])(\s*(?:%|×|x\b))?")
# the path of the figure that follows: `<!-- @a.b[0] -->`, or a ratio's two: `<!-- @a / @b -->`
PATH_MARK = re.compile(r"<!--\s*(@[^>]*?)\s*-->\s*$")
COMMENT = re.compile(r"<!--.*?-->")
KEY = re.compile(r"""\.?([^.\[\]\s"]+)|\[(\d+)\]|\["([^"]+)"\]""")


@dataclass(frozen=True)
class Figure:
    doc: str
    line: int
    text: str
    value: float
    decimals: int
    unit: str  # "", "%" or "x"
    paths: tuple[str, ...] = ()  # the JSON paths it names (two for a ratio); () when it names none


@cache
def results(path: Path) -> object:
    return json.loads(path.read_text())


def resolve(data: object, path: str) -> float:
    """The number at `path` (`a.b[0]["c.d"]`) in `data`; KeyError naming the path when there is none."""
    pos, x = 0, data
    while pos < len(path):
        m = KEY.match(path, pos)
        if not m or m.end() == pos:
            raise KeyError(f"{path}: cannot read the path at {path[pos:]!r}")
        pos = m.end()
        name, index, quoted = m.groups()
        try:
            x = x[int(index)] if index is not None else x[quoted if quoted is not None else name]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            raise KeyError(f"{path}: no {path[:pos]!r} in the JSON") from None
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise KeyError(f"{path}: not a number in the JSON ({type(x).__name__})")
    return float(x)


def _strip_code(text: str) -> str:
    return re.sub(r"`[^`\n]*`", lambda m: " " * len(m.group(0)), text)


def _blank(pattern: re.Pattern[str], text: str) -> str:
    return pattern.sub(lambda m: " " * len(m.group(0)), text)


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
        bare = _blank(COMMENT, text)  # no figure inside a comment
        for m in NUMBER.finditer(bare):
            raw = m.group(1).replace(",", "")
            unit = (m.group(2) or "").strip().replace("×", "x")
            decimals = len(raw.split(".")[1]) if "." in raw else 0
            mark = PATH_MARK.search(text[: m.start()])
            paths = tuple(p.strip().removeprefix("@") for p in mark.group(1).split(" / ")) if mark else ()
            out.append(Figure(doc.name, first_line + offset, m.group(0).strip(), float(raw), decimals, unit, paths))
    return out


def check(fig: Figure, data: object) -> str | None:
    """Why the figure does not match the value(s) at its path(s) in `data`; None when it does."""
    if not fig.paths:
        return "names no JSON path (<!-- @path --> right before it)"
    if len(fig.paths) > (2 if fig.unit == "x" else 1):
        return f"names {len(fig.paths)} paths: a ratio (N×) names its own path or two (@a / @b), others one"
    try:
        values = [resolve(data, p) for p in fig.paths]
    except KeyError as e:
        return str(e.args[0])
    tol = 0.5 * 10 ** -fig.decimals + 1e-9
    if fig.unit == "x" and len(values) == 2:
        a, b = values
        ok = b != 0 and abs(a / b - fig.value) <= tol
    else:
        (v,) = values
        ok = abs(v - fig.value) <= tol or (fig.unit == "%" and abs(100 * v - fig.value) <= tol)
    return None if ok else f"the JSON has {' / '.join(f'{v:g}' for v in values)} at {' / '.join(fig.paths)}"


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
    data = results(ROOT / file)
    wrong = [f"{f.doc}:{f.line}: {f.text!r} {why}" for f in figures(doc, body, line)
             if (why := check(f, data)) is not None]
    assert not wrong, f"figures that do not match {file} (stale, or derived: move them out of the markers): {wrong}"


def test_the_check_catches_a_stale_or_misplaced_figure():
    """The checker itself: each figure against the value at its own path, at the doc's rounding."""
    data = {"a": {"qps": 17.200163, "eff": 0.6272, "rounds": [6.81, 3.40], "b.c": 2.0}}
    doc = Path("x.md")

    def one(text: str) -> list[str | None]:
        return [check(f, data) for f in figures(doc, text, 1)]

    good = ('| label 99 | <!-- @a.qps -->17.2 QPS, <!-- @a.eff -->63 %, <!-- @a.rounds[0] -->6.81, '
            '<!-- @a.rounds[0] / @a.rounds[1] -->2.0×, <!-- @a["b.c"] -->2, an 8-frame 16×16 clip of `drca-cpu 9` |')
    assert [f.text for f in figures(doc, good, 1)] == ["17.2", "63 %", "6.81", "2.0×", "2"]
    assert one(good) == [None] * 5
    for bad in ("<!-- @a.qps -->17.3 QPS", "<!-- @a.eff -->64 %", "<!-- @a.rounds[0] / @a.rounds[1] -->2.1×",
                "<!-- @a.rounds[1] -->6.81",  # a number of the JSON, but not the one at this path
                "17.2",  # no path
                "<!-- @a.nope -->17.2", "<!-- @a.rounds[5] -->6.81", "<!-- @a.qps / @a.eff -->17.2"):
        assert one(bad)[0] is not None, bad
