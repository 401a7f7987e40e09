"""Every figure in README.md and docs/*.md is the value at the JSON path it names, in a committed results file.

The convention: a passage that quotes measured figures is wrapped in two HTML comments, which Markdown does
not render, and each figure in it is written right after a comment naming the path of its value in that
JSON (`@` then keys joined by `.`, list items as `[i]`, a key with a dot or a space in brackets and quotes:
`@videos["a.avi"].mAP`):

    <!-- results: benchmarks/results/service.json -->
    | measurement | result |
    |---|---|
    | decode only | <!-- @results.median.decode_videos_per_s -->6.25 videos/s |
    <!-- /results -->

The file is a benchmark's results (`benchmarks/results/*.json`) or a checkpoint's card
(`model/checkpoints/NAME/card.json`), and the passage names it in its text as well, for readers. A figure
must equal its value at the precision the doc prints it (6.25 for 6.2468); a `%` figure may also be 100
times a fraction; an `N×`/`Nx` figure is a ratio: the path of the ratio itself, or of its two terms,
`<!-- @a / @b -->1.51×` (a `%` figure may name two terms too: 100 × a / b). Every number inside the markers
needs its path (a number without one fails, naming it), and every path must exist. Not checked inside the
markers: text in backticks (commands, presets), and in tables the header row and the first column (the
row's label).

Outside the markers, no figure may appear at all (`test_no_figure_outside_a_results_block`). A figure is a
number written as a measurement is written:
- with a fractional part (`0.897`, `1.7 s`), or as a percentage (`99 %`) or a ratio (`1.28×`, `3x`,
  `2 times`);
- an integer with a unit of time, size or rate (`559 ms`, `35 min`, `270 MB`, `4 GiB`, `113 QPS`,
  `2.95 GMAC`, `3 videos/s`);
- a count out of a total (`7 of 7`, `29 of the 34`).
Other integers (`8 frames`, `K = 4`, `HTTP 422`, `224 px`, `2-core`) are not figures. Not figures either,
and the whole list of exemptions:
- code: fenced blocks and inline code (commands, settings and their defaults, parameters, worked examples,
  derived arithmetic and constants the code holds, such as the paper's figures in `model.cli.SEED_GFLOPS`,
  are written as code), and HTML comments;
- URLs and Markdown link targets;
- in tables, the header row and the first column (the row's label), as inside the markers;
- a bound: a number right after a comparison sign (`≥ 0.97`, `<= 400 ms`: a target, a tolerance, a limit);
- identifiers: an arXiv id (`arXiv 2309.08167`), a section number (`section 6.1`, `§6.1`), a version with
  three parts (`2.13.0`) or after `v` (`v6.2`); names and sizes that are part of a word or a compound
  (`drca-cpu-112`, `R@1`, `320x240`, `16×16`, `8-frame`, `H.264`, `1e-4`).
A measured figure that no committed JSON holds is removed, not exempted.
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
CHECKPOINTS_DIR = ROOT / "model" / "checkpoints"
BLOCK = re.compile(r"<!-- results: (?P<file>\S+) -->(?P<body>.*?)<!-- /results -->", re.S)
# a number that is not part of a word, a version (2.13.0), a name (drca-cpu-112, R@1, 1e-4), a size (16×16)
# or a compound (8-frame, 2-core); with its unit tail. Both ends of a range (0.6-1.6) are numbers.
NUMBER = re.compile(r"(?<![\w./×@^])(?<![A-Za-z_]-)(\d+(?:,\d{3})*(?:\.\d+)?)(?![\w.×]*\d|-[A-Za-z])"
                    r"(\s*(?:%|×|x\b|times\b))?")
# an integer followed by one of these is a measurement: time, size, rate, compute
MEASURE_UNIT = re.compile(r"\s*(?:(?:ms|s|min|minutes?|h|hours?|seconds?|[kKMGT]i?B|bytes|QPS|GMACs?|GFLOPs?)(?![\w/])"
                          r"|[A-Za-z]+/s\b)")
OUT_OF_NEXT = re.compile(r"\s+of\s+(?:the\s+|its\s+)?\d")  # "7 of 7", "29 of the 34": the count ...
OUT_OF_PREV = re.compile(r"\d\s+of\s+(?:the\s+|its\s+)?$")  # ... and its total
# not a figure: a bound (a target, a tolerance, a limit), an arXiv id, a section number, a version after v
NOT_A_FIGURE_BEFORE = re.compile(r"(?:[≤≥<>]=?|\barXiv|\bsection|§)\s*$")
INLINE_CODE = re.compile(r"`(?:[^`\n]|\n(?![ \t]*\n))*`")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
LINK_TARGET = re.compile(r"\]\([^)\s]*\)|<?https?://[^\s)>]+>?")
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
    """`text` without its inline code (which may run over a line break, not over a blank line)."""
    return _blank(INLINE_CODE, text)


def _blank(pattern: re.Pattern[str], text: str) -> str:
    """`text` with every match of `pattern` replaced by spaces, its line breaks kept (so line numbers hold)."""
    return pattern.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


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
            unit = (m.group(2) or "").strip().replace("×", "x").replace("times", "x")
            decimals = len(raw.split(".")[1]) if "." in raw else 0
            start = m.start()
            negative = start > 0 and bare[start - 1] in "-−" and (start < 2 or not bare[start - 2].isalnum())
            if negative:  # -20, −0.2 %
                start -= 1
            mark = PATH_MARK.search(text[:start])
            paths = tuple(p.strip().removeprefix("@") for p in mark.group(1).split(" / ")) if mark else ()
            out.append(Figure(doc.name, first_line + offset, bare[start: m.end()].strip(),
                              -float(raw) if negative else float(raw), decimals, unit, paths))
    return out


def check(fig: Figure, data: object) -> str | None:
    """Why the figure does not match the value(s) at its path(s) in `data`; None when it does."""
    if not fig.paths:
        return "names no JSON path (<!-- @path --> right before it)"
    if len(fig.paths) > (2 if fig.unit in ("x", "%") else 1):
        return f"names {len(fig.paths)} paths: a ratio (N×, N %) names its own path or two (@a / @b), others one"
    try:
        values = [resolve(data, p) for p in fig.paths]
    except KeyError as e:
        return str(e.args[0])
    tol = 0.5 * 10 ** -fig.decimals + 1e-9
    if fig.unit == "x" and len(values) == 2:
        a, b = values
        ok = b != 0 and abs(a / b - fig.value) <= tol
    elif fig.unit == "%" and len(values) == 2:
        a, b = values
        ok = b != 0 and (abs(100 * a / b - fig.value) <= tol or abs(a / b - fig.value) <= tol)
    else:
        (v,) = values
        ok = abs(v - fig.value) <= tol or (fig.unit == "%" and abs(100 * v - fig.value) <= tol)
    return None if ok else f"the JSON has {' / '.join(f'{v:g}' for v in values)} at {' / '.join(fig.paths)}"


def is_results_file(path: Path) -> bool:
    """A benchmark's results JSON or a checkpoint's card: the files a results block may quote."""
    return path.exists() and path.suffix == ".json" and (
        path.parent == RESULTS_DIR or (path.name == "card.json" and path.parent.parent == CHECKPOINTS_DIR))


def is_figure(line: str, m: re.Match[str]) -> bool:
    """Whether the NUMBER match `m` in `line` is written as a measurement (the module docstring's rules)."""
    raw, unit = m.group(1), (m.group(2) or "").strip()
    before, after = line[: m.start()], line[m.end():]
    if NOT_A_FIGURE_BEFORE.search(before):
        return False
    return bool("." in raw or unit or MEASURE_UNIT.match(after) or OUT_OF_NEXT.match(after)
                or OUT_OF_PREV.search(before))


def stray_figures(doc: Path, text: str) -> list[str]:
    """`file:line: figure (context)` for each figure of `text` outside results blocks, code, comments and links."""
    for pattern in (BLOCK, FENCE, COMMENT, LINK_TARGET):
        text = _blank(pattern, text)
    out = []
    for line_no, line in _checked_text(_strip_code(text)):
        for m in NUMBER.finditer(line):
            if is_figure(line, m):
                context = " ".join(line[max(0, m.start() - 40): m.end() + 25].split())
                out.append(f"{doc.name}:{line_no + 1}: {m.group(0).strip()!r} in '{context}'")
    return out


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
        assert is_results_file(path), f"{doc.name}:{line}: no results file {file} (benchmarks/results/*.json " \
                                      "or model/checkpoints/*/card.json)"
        assert file in body or file in doc.read_text(), f"{doc.name}:{line}: the text never names {file}"
        assert figures(doc, body, line), f"{doc.name}:{line}: a results block with no figures"
        named.add(path)
    unquoted = {p.name for p in RESULTS_DIR.glob("*.json") if p not in named}
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

    data["a"]["delta"] = -19.6
    good = ('| label 99 | <!-- @a.qps -->17.2 QPS, <!-- @a.eff -->63 %, <!-- @a.rounds[0] -->6.81, '
            '<!-- @a.rounds[0] / @a.rounds[1] -->2.0×, <!-- @a["b.c"] -->2, an 8-frame 16×16 clip of `drca-cpu 9`, '
            '<!-- @a.delta -->-20 MiB, <!-- @a.rounds[1] / @a.rounds[0] -->50 % |')
    assert [f.text for f in figures(doc, good, 1)] == ["17.2", "63 %", "6.81", "2.0×", "2", "-20", "50 %"]
    assert one(good) == [None] * 7
    for bad in ("<!-- @a.qps -->17.3 QPS", "<!-- @a.eff -->64 %", "<!-- @a.rounds[0] / @a.rounds[1] -->2.1×",
                "<!-- @a.rounds[1] -->6.81",  # a number of the JSON, but not the one at this path
                "17.2",  # no path
                "<!-- @a.nope -->17.2", "<!-- @a.rounds[5] -->6.81", "<!-- @a.qps / @a.eff -->17.2",
                "<!-- @a.delta -->20 MiB",  # the sign is read
                "<!-- @a.rounds[0] / @a.rounds[1] -->50 %"):
        assert one(bad)[0] is not None, bad


def test_no_figure_outside_a_results_block():
    """README.md and docs/*.md quote no figure outside the markers: each sits in a results block at its JSON
    path, or is gone (the module docstring says what counts as a figure and what does not)."""
    stray = [f for doc in DOCS for f in stray_figures(doc, doc.read_text())]
    assert not stray, (
        f"{len(stray)} figures outside <!-- results: FILE --> blocks: wrap each at its JSON path "
        "(<!-- @path -->), write a setting, parameter or worked example as code, or remove a figure no "
        "committed JSON holds:\n" + "\n".join(stray))


def test_the_stray_figure_check_catches_every_kind_of_figure():
    """The outside-the-markers checker itself: each kind of figure is caught, each exemption is not."""
    doc = Path("x.md")
    figures_ = {
        "top-1 agreement 0.79": "0.79", "in 99 % of them": "99 %", "1.28× faster": "1.28×", "3x exact": "3x",
        "about 3 times faster": "3 times", "p50 559 ms": "559", "took 35 min": "35", "wrote 270 MB": "270",
        "a 4 GiB cap": "4", "113 QPS": "113", "34 videos/s": "34", "2 GMAC a clip": "2",
        "the teacher's for 7 of 7": "7", "29 of the 34 videos": "29", "rose from 0.25-0.39": "0.39",
        "| label | 0.5 |\n|---|---|\n| row 1 | 0.981 |": "0.981",
        "<!-- results: benchmarks/results/x.json --><!-- @a -->1.0<!-- /results --> then 2.5 s": "2.5",
    }
    for text, figure in figures_.items():
        found = stray_figures(doc, text)
        assert any(repr(figure) in f for f in found), (text, found)
    not_figures = [
        "8 frames of 224 px, K = 4, HTTP 422, on a 2-core VM, 1,127 distractors, issue 27",
        "`lr 0.01`, `512 MiB`", "```\ntook 0.5 s\n```", "<!-- 0.5 s -->", "[x](docs/a-1.5.md), https://h/2.5",
        "torch 2.13.0+cpu, Redis v6.2, arXiv 2309.08167, RFC 9112 section 6.1, §6.1",
        "drca-cpu-112, R@1, 320x240, 16×16, an 8-frame clip, H.264, 1e-4, 2026-12-06 22:38",
        "cosine ≥ 0.99999, p99 <= 400 ms, target > 0.95",
        "| 0.5 s | header |\n|---|---|\n| 2.5 s (the label) | `3.5 s` |",
    ]
    for text in not_figures:
        assert stray_figures(doc, text) == [], text
    assert stray_figures(doc, "a\nb\n\nc 0.5")[0].startswith("x.md:4:")  # the line, counted from 1
