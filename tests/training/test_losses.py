"""The training objectives against values computed by hand: `symmetric_info_nce` on tiny tensors, and the
shipped trainer's distillation and InfoNCE terms (`training.hybrid.hybrid_loss`) against their formulas
written out in numpy, on the shipped network's outputs for real clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import SHIPPED_CHECKPOINT
from model.checkpoint import load_checkpoint
from tests.model.test_hybrid import DATA, _clip
from training.hybrid import HybridLossConfig, hybrid_loss
from training.losses import symmetric_info_nce


def test_symmetric_info_nce_matches_a_hand_computed_value() -> None:
    """Row i of `a` and row i of `b` are the positives; cosine similarities divided by the temperature;
    the mean (not the sum) over rows of the cross-entropy, both ways, averaged.

    a = (1, 0), (0, 2), (-1, 0); b = (1, 1), (0, 1), (-1, 0); T = 0.5. With r = 1/sqrt(2) the cosines
    are [[r, 0, -1], [r, 1, 0], [-r, 0, 1]], the logits twice that (s = 2r = 1.41421):
    a -> b: row 0 ln(e^s + 1 + e^-2) - s = 0.24375, row 1 ln(e^s + e^2 + 1) - 2 = 0.52592,
            row 2 ln(e^-s + 1 + e^2) - 2 = 0.15549; mean 0.30839;
    b -> a: column 0 ln(2 e^s + e^-s) - s = 0.72228, column 1 ln(2 + e^2) - 2 = 0.23953,
            column 2 ln(e^-2 + 1 + e^2) - 2 = 0.14293; mean 0.36825;
    loss = (0.30839 + 0.36825) / 2 = 0.33832."""
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    b = torch.tensor([[1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    assert symmetric_info_nce(a, b, 0.5).item() == pytest.approx(0.33832, abs=2e-5)
    # T = 2: logits s/4 = 0.35355, 0.5
    s = 0.5 / np.sqrt(2)
    rows = [np.log(np.exp(s) + 1 + np.exp(-0.5)) - s, np.log(np.exp(s) + np.exp(0.5) + 1) - 0.5,
            np.log(np.exp(-s) + 1 + np.exp(0.5)) - 0.5]
    cols = [np.log(2 * np.exp(s) + np.exp(-s)) - s, np.log(2 + np.exp(0.5)) - 0.5,
            np.log(np.exp(-0.5) + 1 + np.exp(0.5)) - 0.5]
    assert symmetric_info_nce(a, b, 2.0).item() == pytest.approx((np.mean(rows) + np.mean(cols)) / 2, abs=1e-6)
    # identical, orthogonal pairs: each row's positive beats N-1 negatives at logit 0 by 1/T
    e = torch.eye(4)
    assert symmetric_info_nce(e, e, 0.25).item() == pytest.approx(np.log(np.exp(4) + 3) - 4, abs=1e-6)
    with pytest.raises(ValueError):
        symmetric_info_nce(a, b[:2], 0.5)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def _kl(target: np.ndarray, student_logits: np.ndarray, t: float) -> float:
    """t^2 KL(target || softmax(student / t)), the mean over the batch."""
    q = _softmax(student_logits / t)
    return float(t**2 * np.mean(np.sum(target * (np.log(target) - np.log(q)), axis=-1)))


def _info_nce(a: np.ndarray, b: np.ndarray, t: float) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    logits = a @ b.T / t
    row = np.mean(np.log(np.exp(logits).sum(1)) - np.diag(logits))
    col = np.mean(np.log(np.exp(logits).sum(0)) - np.diag(logits))
    return float((row + col) / 2)


def test_the_shipped_trainers_objective_matches_its_formulas() -> None:
    """`hybrid_loss` on the shipped network (eval mode: the DCCM picks, no random perturbation) for three
    real clips and their copies (mirrored, 40 % of another clip blended in):

    - kd: T^2 KL(teacher || softmax(student / T)), the teacher's clip distribution being the frame mean
      of the stem classifier's softmax at the *same* T over the anchor's full-size pooled features;
    - kd_copy: the copy's logits against the anchor's teacher distribution;
    - nce: symmetric InfoNCE between anchor i and copy i, cosine / T_nce, the mean over the batch;
    - the loss: their weighted sum."""
    net = load_checkpoint(SHIPPED_CHECKPOINT).model.eval()
    x = torch.cat([_clip(DATA / f"{name}.mp4") for name in ("tiger", "car", "capitol")])
    copies = 0.6 * x.flip(-1) + 0.4 * x.roll(1, 0)
    lc = HybridLossConfig()
    assert (lc.temperature, lc.nce_temperature) == (2.0, 0.05)  # the shipped recipe
    with torch.no_grad():
        anchor, copy = net.stem_outputs(x), net.stem_outputs(copies)
        loss, parts = hybrid_loss(net, anchor, copy, lc)
        out_a, out_c = net.forward_stem(anchor), net.forward_stem(copy)
        frame_logits = net.stem._fc(anchor.pooled_full).double().numpy()  # (B, T, 1000)
    t = lc.temperature
    teacher = _softmax(frame_logits / t).mean(axis=1)
    kd = _kl(teacher, out_a.logits.double().numpy(), t)
    kd_copy = _kl(teacher, out_c.logits.double().numpy(), t)
    nce = _info_nce(out_a.embedding.double().numpy(), out_c.embedding.double().numpy(), lc.nce_temperature)
    assert 0.1 < nce < 2 and kd_copy > kd > 0.01  # neither term is saturated: the comparison below bites
    assert parts["kd"] == pytest.approx(kd, rel=1e-4)
    assert parts["kd_copy"] == pytest.approx(kd_copy, rel=1e-4)
    assert parts["nce"] == pytest.approx(nce, rel=1e-4)
    want = lc.kd_weight * kd + lc.copy_kd_weight * kd_copy + lc.nce_weight * nce
    assert loss.item() == pytest.approx(want, rel=1e-4)
