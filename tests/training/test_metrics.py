import math

import numpy as np
import pytest
import torch

from training.metrics import (
    average_precision,
    chamfer_matrix,
    chamfer_similarity,
    classification_metrics,
    retrieval_metrics,
)


def test_classification_metrics_match_hand_computation() -> None:
    # 4 samples, 6 classes. Sample 0: right at top-1. Sample 1: right at rank 2. Sample 2: right at rank 6.
    # Sample 3: right at top-1.
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],
            [0.5, 0.4, 0.0, 0.0, 0.0, 0.0],
            [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
            [0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
        ]
    )
    labels = torch.tensor([0, 1, 5, 2])
    m = classification_metrics(scores, labels)
    assert m["top1"] == pytest.approx(2 / 4)
    assert m["top5"] == pytest.approx(3 / 4)
    # classes present: 0 (1/1), 1 (0/1), 5 (0/1), 2 (1/1) -> mean 0.5
    assert m["mean_class_acc"] == pytest.approx(0.5)


def test_mean_class_accuracy_is_not_sample_accuracy() -> None:
    scores = torch.tensor([[1.0, 0.0]] * 9 + [[1.0, 0.0]])
    labels = torch.tensor([0] * 9 + [1])
    m = classification_metrics(scores, labels)
    assert m["top1"] == pytest.approx(0.9)
    assert m["mean_class_acc"] == pytest.approx(0.5)


def test_average_precision_hand_computed() -> None:
    # ranking: R N R N R -> precisions at hits 1/1, 2/3, 3/5
    scores = [5, 4, 3, 2, 1]
    rel = [True, False, True, False, True]
    assert average_precision(scores, rel) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert average_precision([1, 2, 3], [True, False, False]) == pytest.approx(1 / 3)
    assert math.isnan(average_precision([1.0], [False]))


def test_chamfer_similarity_is_mean_of_row_maxima() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # row maxima: q0 -> 1.0, q1 -> 0.8
    assert chamfer_similarity(q, v) == pytest.approx(0.9)
    assert chamfer_similarity(v, q) == pytest.approx((1.0 + 0.8) / 2)
    m = chamfer_matrix([q, v], [v, q, q[:1]])
    assert m[0, 0] == pytest.approx(0.9)
    assert m[1, 1] == pytest.approx(0.9)
    assert m[0, 2] == pytest.approx((1.0 + 0.0) / 2)


def test_retrieval_metrics_exclude_the_query_and_skip_queries_without_positives() -> None:
    db = ["a", "b", "c", "d"]
    queries = ["a", "x", "y"]
    sims = np.array(
        [
            [1.0, 0.2, 0.9, 0.1],  # query a: itself excluded; ranking c, b, d; relevant {b}
            [0.1, 0.2, 0.3, 0.4],  # x: ranking d, c, b, a; relevant {d, a}
            [0.5, 0.5, 0.5, 0.5],  # y: nothing relevant -> skipped
        ]
    )
    rel = {"a": {"b"}, "x": {"d", "a"}}
    m = retrieval_metrics(sims, queries, db, rel)
    assert m["queries"] == 2
    assert m["AP/a"] == pytest.approx(1 / 2)
    assert m["AP/x"] == pytest.approx((1 + 2 / 4) / 2)
    assert m["mAP"] == pytest.approx((0.5 + 0.75) / 2)
    assert m["R@1"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        retrieval_metrics(sims[:1], ["y"], db, rel)
