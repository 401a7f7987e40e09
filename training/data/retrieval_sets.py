"""Retrieval evaluation sets: FIVR-style (ND/DS/CS/IS labels and protocols) and generic near-duplicate.

Files
-----
* id lists (queries, database): one video id per line; blank lines and ``#`` comments are skipped;
  duplicates are errors.
* FIVR relevance annotation, either
  - JSON as FIVR-200K's ``annotation.json``: ``{query_id: {label: [video_id, ...]}}``, or
  - TSV: ``query_id<TAB>video_id<TAB>label`` per line.
  Labels: ND (near-duplicate), DS (duplicate scene), CS (complementary scene), IS (incident scene),
  and DA (duplicate audio, used only by FIVR's audio task). A video has one label per query.
* near-duplicate relevance, either JSON ``{query_id: [video_id, ...]}`` or TSV ``query_id<TAB>video_id``.

Validation (``strict=True``, the default): every annotated query is in the query list and every query
in the list is annotated, and every relevant id is in the database list. With ``strict=False`` relevant
ids missing from the database (videos that could not be downloaded, common with FIVR) are dropped with
a warning instead. Errors are :class:`~training.data.annotations.AnnotationError` with file and line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from training.data.annotations import AnnotationError

logger = logging.getLogger(__name__)


class RelevanceLabel(StrEnum):
    ND = "ND"  # near-duplicate
    DS = "DS"  # duplicate scene
    CS = "CS"  # complementary scene
    IS = "IS"  # incident scene
    DA = "DA"  # duplicate audio (FIVR audio task)


class Protocol(StrEnum):
    DSVR = "DSVR"  # duplicate scene video retrieval
    CSVR = "CSVR"  # complementary scene video retrieval
    ISVR = "ISVR"  # incident scene video retrieval
    DAVR = "DAVR"  # duplicate audio video retrieval


PROTOCOL_LABELS: dict[Protocol, frozenset[RelevanceLabel]] = {
    Protocol.DSVR: frozenset({RelevanceLabel.ND, RelevanceLabel.DS}),
    Protocol.CSVR: frozenset({RelevanceLabel.ND, RelevanceLabel.DS, RelevanceLabel.CS}),
    Protocol.ISVR: frozenset({RelevanceLabel.ND, RelevanceLabel.DS, RelevanceLabel.CS, RelevanceLabel.IS}),
    Protocol.DAVR: frozenset({RelevanceLabel.DA}),
}


@dataclass(frozen=True)
class FIVRSet:
    """Queries, database and per-query labelled relevant videos."""

    queries: tuple[str, ...]
    database: tuple[str, ...]
    annotation: Mapping[str, Mapping[RelevanceLabel, frozenset[str]]]

    def relevant(self, query: str, protocol: Protocol) -> frozenset[str]:
        """Ids relevant to ``query`` under ``protocol`` (the union of the protocol's labels)."""
        return relevant_ids(self.annotation, query, protocol)

    def relevant_sets(self, protocol: Protocol) -> dict[str, frozenset[str]]:
        return {q: self.relevant(q, protocol) for q in self.queries}


@dataclass(frozen=True)
class NearDuplicateSet:
    queries: tuple[str, ...]
    database: tuple[str, ...]
    relevant: Mapping[str, frozenset[str]]


def relevant_ids(
    annotation: Mapping[str, Mapping[RelevanceLabel, Iterable[str]]], query: str, protocol: Protocol
) -> frozenset[str]:
    """Relevant ids for one query under a protocol; raises ``KeyError`` for an unknown query."""
    labels = annotation[query]
    out: set[str] = set()
    for label in PROTOCOL_LABELS[protocol]:
        out.update(labels.get(label, ()))
    return frozenset(out)


# ------------------------------------------------------------------------------------------- reading


def _read_lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AnnotationError(path, None, "file not found") from None
    except UnicodeDecodeError as exc:
        raise AnnotationError(path, None, f"not UTF-8 text ({exc.reason})") from None
    return [
        (no, line.rstrip("\r\n"))
        for no, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnnotationError(path, None, "file not found") from None
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise AnnotationError(path, None, f"not UTF-8 text ({exc.reason})") from None


def _is_json(path: Path) -> bool:
    return path.suffix.lower() == ".json"


def load_id_list(path: str | Path) -> tuple[str, ...]:
    """One id per line; ids may not contain whitespace; duplicates are errors."""
    path = Path(path)
    seen: dict[str, int] = {}
    for no, line in _read_lines(path):
        vid = line.strip()
        if len(vid.split()) != 1:
            raise AnnotationError(path, no, f"expected one id per line, got {vid!r}")
        if vid in seen:
            raise AnnotationError(path, no, f"duplicate id {vid!r} (first on line {seen[vid]})")
        seen[vid] = no
    return tuple(seen)


def _label(value: str, path: Path, line: int | None, where: str = "") -> RelevanceLabel:
    try:
        return RelevanceLabel(value.strip().upper())
    except ValueError:
        allowed = ", ".join(label.value for label in RelevanceLabel)
        raise AnnotationError(path, line, f"{where}unknown label {value!r} (expected one of {allowed})") from None


def load_fivr_annotation(path: str | Path) -> dict[str, dict[RelevanceLabel, frozenset[str]]]:
    """Read a FIVR annotation, JSON (``annotation.json``) or TSV, by the file suffix."""
    path = Path(path)
    raw: dict[str, dict[RelevanceLabel, set[str]]] = {}
    first_seen: dict[tuple[str, str], tuple[RelevanceLabel, int | None]] = {}

    def add(query: str, vid: str, label: RelevanceLabel, line: int | None) -> None:
        prev = first_seen.get((query, vid))
        if prev is not None and prev[0] is not label:
            where = f" (line {prev[1]})" if prev[1] is not None else ""
            raise AnnotationError(
                path, line, f"video {vid!r} has two labels for query {query!r}: {prev[0]}{where} and {label}"
            )
        first_seen[(query, vid)] = (label, line)
        raw.setdefault(query, {}).setdefault(label, set()).add(vid)

    if _is_json(path):
        data = _read_json(path)
        if not isinstance(data, dict):
            raise AnnotationError(path, None, "expected a JSON object {query_id: {label: [video_id, ...]}}")
        for query, labels in data.items():
            if not isinstance(labels, dict):
                raise AnnotationError(path, None, f"query {query!r}: expected an object {{label: [ids]}}")
            raw.setdefault(query, {})
            for label_text, vids in labels.items():
                label = _label(label_text, path, None, f"query {query!r}: ")
                if not isinstance(vids, list) or not all(isinstance(v, str) for v in vids):
                    raise AnnotationError(path, None, f"query {query!r}, label {label_text}: expected a list of ids")
                for vid in vids:
                    add(query, vid, label, None)
    else:
        for no, line in _read_lines(path):
            fields = line.split("\t")
            if len(fields) != 3 or not all(f.strip() for f in fields):
                raise AnnotationError(path, no, f"expected 'query_id<TAB>video_id<TAB>label', got {line!r}")
            query, vid, label_text = (f.strip() for f in fields)
            add(query, vid, _label(label_text, path, no), no)
    return {q: {lab: frozenset(v) for lab, v in labels.items()} for q, labels in raw.items()}


def _line_index(path: Path, queries: Iterable[str]) -> dict[str, int | None]:
    """First line mentioning each query in a TSV file (for error messages); None for JSON."""
    if _is_json(path):
        return {}
    index: dict[str, int | None] = {}
    for no, line in _read_lines(path):
        index.setdefault(line.split("\t", 1)[0].strip(), no)
    return index


def _validate(
    relevance_path: Path,
    queries: tuple[str, ...],
    database: tuple[str, ...],
    annotated: Mapping[str, Iterable[str]],
    strict: bool,
    queries_path: Path,
) -> set[str]:
    """Check queries and relevant ids; returns the relevant ids to drop (non-strict mode)."""
    lines = _line_index(relevance_path, annotated)
    query_set, db_set = set(queries), set(database)
    for q in annotated:
        if q not in query_set:
            raise AnnotationError(relevance_path, lines.get(q), f"query {q!r} is not in the query list {queries_path}")
    for q in queries:
        if q not in annotated:
            raise AnnotationError(relevance_path, None, f"query {q!r} from {queries_path} has no annotation")
    missing: set[str] = set()
    for q, vids in annotated.items():
        for vid in vids:
            if vid not in db_set:
                if strict:
                    where = _first_line_of_pair(relevance_path, q, vid)
                    raise AnnotationError(relevance_path, where, f"relevant id {vid!r} (query {q!r}) is not in the database list")
                missing.add(vid)
    if missing:
        logger.warning("%s: dropping %d relevant ids not in the database list", relevance_path, len(missing))
    return missing


def _first_line_of_pair(path: Path, query: str, vid: str) -> int | None:
    if _is_json(path):
        return None
    for no, line in _read_lines(path):
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) >= 2 and fields[0] == query and fields[1] == vid:
            return no
    return None


def load_fivr(
    queries_path: str | Path, database_path: str | Path, annotation_path: str | Path, strict: bool = True
) -> FIVRSet:
    """Load and cross-check a FIVR-style evaluation set."""
    queries_path, annotation_path = Path(queries_path), Path(annotation_path)
    queries, database = load_id_list(queries_path), load_id_list(database_path)
    annotation = load_fivr_annotation(annotation_path)
    flat = {q: [v for vids in labels.values() for v in vids] for q, labels in annotation.items()}
    drop = _validate(annotation_path, queries, database, flat, strict, queries_path)
    if drop:
        annotation = {q: {lab: v - drop for lab, v in labels.items()} for q, labels in annotation.items()}
    return FIVRSet(queries=queries, database=database, annotation=annotation)


def load_relevance(path: str | Path) -> dict[str, frozenset[str]]:
    """Near-duplicate relevance: JSON ``{query_id: [ids]}`` or TSV ``query_id<TAB>video_id``."""
    path = Path(path)
    out: dict[str, set[str]] = {}
    if _is_json(path):
        data = _read_json(path)
        if not isinstance(data, dict):
            raise AnnotationError(path, None, "expected a JSON object {query_id: [video_id, ...]}")
        for q, vids in data.items():
            if not isinstance(vids, list) or not all(isinstance(v, str) for v in vids):
                raise AnnotationError(path, None, f"query {q!r}: expected a list of ids")
            out.setdefault(q, set()).update(vids)
    else:
        for no, line in _read_lines(path):
            fields = line.split("\t")
            if len(fields) != 2 or not all(f.strip() for f in fields):
                raise AnnotationError(path, no, f"expected 'query_id<TAB>video_id', got {line!r}")
            out.setdefault(fields[0].strip(), set()).add(fields[1].strip())
    return {q: frozenset(v) for q, v in out.items()}


def load_near_duplicate(
    queries_path: str | Path, database_path: str | Path, relevance_path: str | Path, strict: bool = True
) -> NearDuplicateSet:
    """Load and cross-check a near-duplicate set. A query with no relevant video must appear in JSON as
    ``"q": []``; TSV cannot express that, so there every listed query needs at least one pair."""
    queries_path, relevance_path = Path(queries_path), Path(relevance_path)
    queries, database = load_id_list(queries_path), load_id_list(database_path)
    relevant = load_relevance(relevance_path)
    drop = _validate(relevance_path, queries, database, relevant, strict, queries_path)
    if drop:
        relevant = {q: v - drop for q, v in relevant.items()}
    return NearDuplicateSet(queries=queries, database=database, relevant=relevant)


# ------------------------------------------------------------------------------------------- writing


def _check_id(vid: str) -> None:
    if not vid or len(vid.split()) != 1 or vid != vid.strip() or vid.startswith("#"):
        raise ValueError(f"id {vid!r} cannot be written (empty, whitespace or leading '#')")


def write_id_list(path: str | Path, ids: Iterable[str]) -> None:
    ids = list(ids)
    for vid in ids:
        _check_id(vid)
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate ids")
    Path(path).write_text("".join(f"{v}\n" for v in ids), encoding="utf-8")


def write_fivr_annotation(path: str | Path, annotation: Mapping[str, Mapping[RelevanceLabel, Iterable[str]]]) -> None:
    """Write JSON (``.json``) or TSV (anything else), sorted so the output is deterministic."""
    path = Path(path)
    if _is_json(path):
        data = {q: {str(lab): sorted(v) for lab, v in sorted(labels.items())} for q, labels in annotation.items()}
        path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        return
    lines = []
    for q, labels in annotation.items():
        for lab, vids in sorted(labels.items()):
            for vid in sorted(vids):
                _check_id(q)
                _check_id(vid)
                lines.append(f"{q}\t{vid}\t{lab}\n")
    path.write_text("".join(lines), encoding="utf-8")


def write_relevance(path: str | Path, relevant: Mapping[str, Iterable[str]]) -> None:
    path = Path(path)
    if _is_json(path):
        path.write_text(json.dumps({q: sorted(v) for q, v in relevant.items()}, indent=1) + "\n", encoding="utf-8")
        return
    lines = []
    for q, vids in relevant.items():
        vids = sorted(vids)
        if not vids:
            raise ValueError(f"query {q!r} has no relevant ids; TSV cannot express that, write JSON")
        for vid in vids:
            _check_id(q)
            _check_id(vid)
            lines.append(f"{q}\t{vid}\n")
    path.write_text("".join(lines), encoding="utf-8")
