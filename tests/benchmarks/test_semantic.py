"""benchmarks/semantic.py: its retrieval metrics by hand, the stored probabilities it mimics, and the
committed queries file."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from benchmarks.semantic import QUERIES, chance_metrics, load_queries, retrieval_metrics, top_k_dense


def test_retrieval_metrics_by_hand():
    gallery = ["a", "b", "c", "d", "e", "f"]
    scores = {
        "q1": {"a": 0.9, "b": 0.5, "c": 0.1},  # relevant a: rank 1
        "q2": {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6, "e": 0.5, "f": 0.4},  # relevant f: rank 6
        "q3": {"a": 0.9, "b": 0.8, "c": 0.7},  # relevant b (rank 2) and e (missing: last, rank 6)
        "q4": {"a": 0.5, "b": 0.5},  # relevant b, tied with a: pessimistic, rank 2
    }
    relevant = {"q1": {"a"}, "q2": {"f"}, "q3": {"b", "e"}, "q4": {"b"}, "q5": {"zzz"}}  # q5: not in gallery
    m = retrieval_metrics(scores, relevant, gallery)
    assert m["queries"] == 4
    assert m["R@1"] == pytest.approx(1 / 4)
    assert m["R@5"] == pytest.approx(3 / 4)
    ap = [1.0, 1 / 6, (1 / 2 + 2 / 6) / 2, 1 / 2]
    assert m["mAP"] == pytest.approx(np.mean(ap))
    with pytest.raises(ValueError, match="no query"):
        retrieval_metrics({"q": {}}, {"q": {"x"}}, gallery)


def test_chance_on_a_gallery_of_five_finds_everything_in_the_top_five():
    c = chance_metrics({"q": {"a"}}, ["a", "b", "c", "d", "e"], draws=200)
    assert c["R@5"] == 1.0 and 0.1 < c["R@1"] < 0.3


def test_top_k_dense_keeps_what_the_service_stores():
    p = np.array([0.1, 0.4, 0.2, 0.3])
    np.testing.assert_allclose(top_k_dense(p, 2), [0.0, 0.4, 0.0, 0.3])


def test_the_queries_file_is_well_formed():
    videos, queries = load_queries(QUERIES)
    assert len(queries) >= 20 and len(videos) == 34
    assert all(re.fullmatch(r"videos/[\w.+-]+", f) and re.fullmatch(r"[0-9a-f]{64}", h) for f, h in videos.items())
    assert len({q["text"] for q in queries}) == len(queries)
    assert json.loads(QUERIES.read_text())["about"]  # how the sentences were written, said in the file
