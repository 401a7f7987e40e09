import json
from pathlib import Path

import pytest

from training.data.annotations import AnnotationError
from training.data.retrieval_sets import (
    Protocol,
    RelevanceLabel,
    load_fivr,
    load_fivr_annotation,
    load_id_list,
    load_near_duplicate,
    write_fivr_annotation,
    write_id_list,
    write_relevance,
)

L = RelevanceLabel
TOY = {
    "q1": {L.ND: {"a"}, L.DS: {"b"}, L.CS: {"c"}, L.IS: {"d"}},
    "q2": {L.CS: {"a", "e"}, L.DA: {"f"}},
}
DATABASE = ["a", "b", "c", "d", "e", "f", "g"]


def _write_set(tmp_path: Path, suffix: str) -> tuple[Path, Path, Path]:
    q, db, ann = tmp_path / "queries.txt", tmp_path / "database.txt", tmp_path / f"annotation{suffix}"
    write_id_list(q, ["q1", "q2"])
    write_id_list(db, DATABASE)
    write_fivr_annotation(ann, TOY)
    return q, db, ann


@pytest.mark.parametrize("suffix", [".json", ".tsv"])
def test_fivr_protocol_relevant_sets(tmp_path: Path, suffix: str) -> None:
    fivr = load_fivr(*_write_set(tmp_path, suffix))
    assert fivr.queries == ("q1", "q2")
    assert fivr.relevant("q1", Protocol.DSVR) == {"a", "b"}
    assert fivr.relevant("q1", Protocol.CSVR) == {"a", "b", "c"}
    assert fivr.relevant("q1", Protocol.ISVR) == {"a", "b", "c", "d"}
    assert fivr.relevant_sets(Protocol.DSVR) == {"q1": {"a", "b"}, "q2": set()}
    assert fivr.relevant("q2", Protocol.ISVR) == {"a", "e"}  # DA belongs to the audio task only
    assert fivr.relevant("q2", Protocol.DAVR) == {"f"}


def test_fivr_json_and_tsv_agree_and_round_trip(tmp_path: Path) -> None:
    _, _, ann_json = _write_set(tmp_path, ".json")
    _, _, ann_tsv = _write_set(tmp_path, ".tsv")
    expected = {q: {lab: frozenset(v) for lab, v in labels.items()} for q, labels in TOY.items()}
    assert load_fivr_annotation(ann_json) == expected
    assert load_fivr_annotation(ann_tsv) == expected
    assert "q1\ta\tND\n" in ann_tsv.read_text()
    # FIVR-200K's own spelling: label keys in JSON, lists of ids
    assert json.loads(ann_json.read_text())["q2"] == {"CS": ["a", "e"], "DA": ["f"]}


def _expect(tmp_path: Path, fn, line: int | None, fragment: str) -> None:
    with pytest.raises(AnnotationError) as err:
        fn()
    assert err.value.line_no == line, str(err.value)
    assert fragment in str(err.value)


def test_fivr_errors(tmp_path: Path) -> None:
    q, db, ann = _write_set(tmp_path, ".tsv")
    ann.write_text("q1\ta\tND\nq1\tb\tXX\n")
    _expect(tmp_path, lambda: load_fivr_annotation(ann), 2, "unknown label 'XX'")
    ann.write_text("q1\ta\tND\nq1\ta\tDS\n")
    _expect(tmp_path, lambda: load_fivr_annotation(ann), 2, "two labels")
    ann.write_text("q1\ta\tND\nq1 a ND\n")
    _expect(tmp_path, lambda: load_fivr_annotation(ann), 2, "expected 'query_id<TAB>video_id<TAB>label'")
    ann.write_text("q1\ta\tND\nq2\ta\tND\nq1\tzzz\tCS\n")
    _expect(tmp_path, lambda: load_fivr(q, db, ann), 3, "relevant id 'zzz'")
    ann.write_text("q1\ta\tND\n")
    _expect(tmp_path, lambda: load_fivr(q, db, ann), None, "query 'q2'")
    ann.write_text("q1\ta\tND\nq2\ta\tND\nq9\ta\tND\n")
    _expect(tmp_path, lambda: load_fivr(q, db, ann), 3, "query 'q9' is not in the query list")
    bad_json = tmp_path / "a.json"
    bad_json.write_text('{"q1": {"ND": ["a"]},\n "q2": {"ND": ["a"]\n}')
    _expect(tmp_path, lambda: load_fivr_annotation(bad_json), 3, "invalid JSON")
    bad_json.write_text('{"q1": {"ND": "a"}}')
    _expect(tmp_path, lambda: load_fivr_annotation(bad_json), None, "expected a list of ids")


def test_fivr_non_strict_drops_missing_database_ids(tmp_path: Path) -> None:
    q, db, ann = _write_set(tmp_path, ".json")
    write_id_list(db, ["a", "b", "c"])
    fivr = load_fivr(q, db, ann, strict=False)
    assert fivr.relevant("q1", Protocol.ISVR) == {"a", "b", "c"}


def test_id_list_errors(tmp_path: Path) -> None:
    p = tmp_path / "ids.txt"
    p.write_text("a\n# comment\nb\na\n")
    _expect(tmp_path, lambda: load_id_list(p), 4, "duplicate id 'a' (first on line 1)")
    p.write_text("a b\n")
    _expect(tmp_path, lambda: load_id_list(p), 1, "one id per line")


@pytest.mark.parametrize("suffix", [".json", ".tsv"])
def test_near_duplicate_round_trip(tmp_path: Path, suffix: str) -> None:
    q, db, rel = tmp_path / "q.txt", tmp_path / "db.txt", tmp_path / f"rel{suffix}"
    write_id_list(q, ["x", "y"])
    write_id_list(db, ["x", "a", "b", "c"])
    write_relevance(rel, {"x": {"a", "b"}, "y": {"c", "x"}})
    nd = load_near_duplicate(q, db, rel)
    assert nd.queries == ("x", "y") and nd.database == ("x", "a", "b", "c")
    assert nd.relevant == {"x": {"a", "b"}, "y": {"c", "x"}}


def test_near_duplicate_errors(tmp_path: Path) -> None:
    q, db, rel = tmp_path / "q.txt", tmp_path / "db.txt", tmp_path / "rel.tsv"
    write_id_list(q, ["x"])
    write_id_list(db, ["a"])
    rel.write_text("x\ta\nx\tb\n")
    _expect(tmp_path, lambda: load_near_duplicate(q, db, rel), 2, "relevant id 'b'")
    rel.write_text("x\ta\textra\n")
    _expect(tmp_path, lambda: load_near_duplicate(q, db, rel), 1, "expected 'query_id<TAB>video_id'")
    with pytest.raises(ValueError, match="write JSON"):
        write_relevance(rel, {"x": []})
    rel_json = tmp_path / "rel.json"
    write_relevance(rel_json, {"x": []})
    assert load_near_duplicate(q, db, rel_json).relevant == {"x": frozenset()}
