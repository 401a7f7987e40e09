"""The compact embedding (`model.reduction`, `drca train reduce`): the fit is orthogonal (pca) or whitening
(whiten) as documented, its tensors are in the weights file (so in the checkpoint's sha256), the config
records the reduced size, the network applies it where the embedding leaves it, and bad input is one line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from model.checkpoint import ModelCard, load_checkpoint, read_shapes, save_checkpoint
from model.config import BackboneConfig, DRCAConfig, HeadConfig, InputConfig
from model.drca import DRCA
from model.reduction import MEAN, PROJECTION, apply_reduction, fit_reduction
from model.text import TextHead
from training.reduce import embed_videos, full_width, reduce_checkpoint, video_files

DATA = Path(__file__).parents[1] / "data"
WIDTH = 32  # the tiny network's feature
FIT = {"stride_s": 1.0, "views": ("original", "mirrored")}  # 40 segment embeddings of the 4 clips


def tiny_config(**head: object) -> DRCAConfig:
    return DRCAConfig(
        name="tiny-feature", input=InputConfig(num_frames=4, img_size=32),
        backbone=BackboneConfig(patch_size=8, embed_dim=WIDTH, depth=2, num_heads=2, drop_path=0.0,
                                comp_insert_layer=1, num_saliency=2, num_samples=20, sal_ref_heads=2),
        head=HeadConfig(num_classes=0, embed_dim=WIDTH, embedding="feature", pool="mean", **head),
    )


def tiny_feature_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random 2-layer DRCA that embeds its L2-normalised 32-d feature (no text head)."""
    torch.manual_seed(seed)
    return save_checkpoint(path, DRCA(tiny_config()).eval(), ModelCard(preset="tiny-feature"))


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_feature_checkpoint(tmp_path_factory.mktemp("ck") / "full")


def sha256(ckpt: Path) -> str:
    return hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()


def correlated(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Unit rows with a far-from-isotropic covariance (as real embeddings)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) @ (rng.standard_normal((d, d)) * np.linspace(3, 0.1, d)) + 2.0
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_pca_fit_is_an_orthogonal_projection_onto_the_top_directions():
    x = correlated(500, 24)
    fit = fit_reduction(x, 8, "pca")
    p = fit.projection.astype(np.float64)
    np.testing.assert_allclose(p @ p.T, np.eye(8), atol=1e-5)  # P P^T = I
    np.testing.assert_allclose(fit.mean, x.mean(0), atol=1e-6)
    y = (x - fit.mean) @ p.T
    var = y.var(0, ddof=1)
    np.testing.assert_allclose(var, fit.eigenvalues[:8], rtol=1e-4)  # the top 8 eigenvalues, in order
    assert (np.diff(var) <= 1e-9).all()
    cov = np.cov(y, rowvar=False)
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-6)  # decorrelated, not whitened
    assert 0.5 < fit.explained_variance < 1
    again = fit_reduction(x, 8, "pca")
    np.testing.assert_array_equal(again.projection, fit.projection)  # signs fixed: reproducible


def test_whiten_fit_gives_identity_covariance_on_its_training_features():
    x = correlated(500, 24, seed=1)
    fit = fit_reduction(x, 8, "whiten")
    y = (x.astype(np.float64) - fit.mean) @ fit.projection.T.astype(np.float64)
    np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(8), atol=1e-4)
    pca = fit_reduction(x, 8, "pca").projection
    np.testing.assert_allclose(fit.projection * np.sqrt(fit.eigenvalues[:8])[:, None], pca, atol=1e-5)


@pytest.mark.parametrize(("x", "dim", "kind", "match"), [
    (np.ones((10, 4)), 2, "whiten", "span fewer"),  # no variance to whiten
    (np.ones((3, 4)), 3, "pca", "3 embeddings cannot fit"),
    (np.ones((10, 4)), 5, "pca", r"in \[1, 4\]"),
    (np.ones((10, 4)), 2, "lda", "pca or whiten"),
    (np.full((10, 4), np.nan), 2, "pca", "finite"),
])
def test_fit_refuses_what_it_cannot_fit(x, dim, kind, match):
    with pytest.raises(ValueError, match=match):
        fit_reduction(x, dim, kind)


def test_config_records_the_reduced_size_and_refuses_nonsense():
    cfg = tiny_config(reduction="whiten")
    assert DRCAConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    reduced = DRCAConfig.from_dict({**cfg.to_dict(), "head": {**cfg.to_dict()["head"], "embed_dim": 8}})
    assert reduced.head.embed_dim == 8 and reduced.head.reduction == "whiten"
    with pytest.raises(ValueError, match="must be 32"):  # no reduction: the feature's own width
        tiny_config(reduction="none").__class__.from_dict({**cfg.to_dict(), "head": {
            **cfg.to_dict()["head"], "embed_dim": 8, "reduction": "none"}})
    with pytest.raises(ValueError, match=r"in \[1, 32\]"):
        DRCAConfig.from_dict({**cfg.to_dict(), "head": {**cfg.to_dict()["head"], "embed_dim": 64}})
    with pytest.raises(ValueError, match="needs head.embedding=feature"):
        DRCAConfig.from_dict({**cfg.to_dict(), "head": {**cfg.to_dict()["head"], "embedding": "linear"}})
    with pytest.raises(ValueError, match="not one of"):
        DRCAConfig.from_dict({**cfg.to_dict(), "head": {**cfg.to_dict()["head"], "reduction": "lda"}})
    old = cfg.to_dict()
    del old["head"]["reduction"]  # a config.json written before the field: no reduction
    assert DRCAConfig.from_dict({**old, "head": {**old["head"], "embed_dim": WIDTH}}).head.reduction == "none"


def test_reduce_writes_a_new_checkpoint_whose_weights_hold_the_fit(full: Path, tmp_path: Path):
    out = tmp_path / "reduced"
    report = reduce_checkpoint(full, out, 8, "whiten", videos=DATA, **FIT)
    assert report.fit.samples == 40
    ck, before = load_checkpoint(out), load_checkpoint(full)
    assert ck.config.head.embed_dim == ck.card.embed_dim == 8 and ck.config.head.reduction == "whiten"
    assert read_shapes(out)[MEAN] == (WIDTH,) and read_shapes(out)[PROJECTION] == (8, WIDTH)
    assert sha256(out) != sha256(full)  # the identity covers the reduction
    assert ck.card.metrics["reduction_dim"] == 8 and ck.card.metrics["reduction_samples"] == 40
    assert ck.card.commands[-1].startswith("drca train reduce")
    old_state = before.model.state_dict()
    for k, v in ck.model.state_dict().items():  # every other tensor untouched
        if k not in (MEAN, PROJECTION):
            assert torch.equal(v, old_state[k]), k
    # the fit's own data, re-embedded at full width, is whitened by the stored tensors
    x = embed_videos(before.model, video_files(DATA), **FIT)
    mean, proj = ck.model.reduction.mean.numpy(), ck.model.reduction.projection.numpy()
    y = (x.astype(np.float64) - mean) @ proj.T.astype(np.float64)
    np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(8), atol=1e-3)
    # the network applies it where the embedding leaves it: normalise(P (normalise(feature) - m))
    clips = torch.randn(3, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out_full, out_red = before.model(clips), ck.model(clips)
        with full_width(ck.model):
            same_full = ck.model(clips).embedding
    torch.testing.assert_close(same_full, out_full.embedding)
    assert out_red.embedding.shape == (3, 8)
    np.testing.assert_allclose(out_red.embedding.numpy(), apply_reduction(out_full.embedding.numpy(), mean, proj),
                               atol=1e-5)
    # a second reduction of the reduced checkpoint starts again from the full-width feature
    pca = reduce_checkpoint(out, tmp_path / "pca", 8, "pca", videos=DATA, **FIT)
    np.testing.assert_allclose(pca.fit.mean, report.fit.mean, atol=1e-6)
    assert sha256(tmp_path / "pca") not in (sha256(out), sha256(full))


def test_the_held_out_real_videos_can_be_left_out(tmp_path: Path):
    from training.data.distill import load_split

    held = sorted(load_split().heldout_videos)[0]
    (tmp_path / "videos").mkdir()
    for name in ("tiger.mp4", held):
        (tmp_path / "videos" / name).write_bytes((DATA / "tiger.mp4").read_bytes())
    assert [p.name for p in video_files(tmp_path)] == sorted(["tiger.mp4", held])
    assert [p.name for p in video_files(tmp_path, exclude_heldout=True)] == ["tiger.mp4"]
    (tmp_path / "videos" / "tiger.mp4").unlink()
    with pytest.raises(ValueError, match="besides the held-out ones"):
        video_files(tmp_path, exclude_heldout=True)


def test_the_fit_takes_every_folder_given(full: Path, tmp_path: Path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "tiger.mp4").write_bytes((DATA / "tiger.mp4").read_bytes())
    report = reduce_checkpoint(full, tmp_path / "two", 8, "pca", videos=[DATA, other], **FIT)
    own = len(embed_videos(load_checkpoint(full).model, video_files(other), **FIT))
    assert own > 0 and report.fit.samples == 40 + own
    assert str(DATA) in report.data and str(other) in report.data
    res = run_cli("--checkpoint", str(full), "--out", str(tmp_path / "cli"), "--dim", "8", "--kind", "pca",
                  "--videos", str(DATA), "--videos", str(other), "--stride-s", "1")
    assert res.exit_code == 0 and f"on {20 + own // 2} embeddings" in res.output, res.output


def run_cli(*args: str):
    return CliRunner().invoke(app, ["train", "reduce", *args])


def test_cli_reduces_and_refuses_bad_input_with_one_line(full: Path, tmp_path: Path):
    out = tmp_path / "r"
    res = run_cli("--checkpoint", str(full), "--out", str(out), "--dim", "8", "--kind", "pca", "--videos", str(DATA),
                  "--stride-s", "1")
    assert res.exit_code == 0, res.output
    assert "pca to 8-d on 20 embeddings" in res.output and load_checkpoint(out).config.head.reduction == "pca"
    with_text = tmp_path / "text"
    torch.manual_seed(0)
    save_checkpoint(with_text, DRCA(tiny_config()).eval(), ModelCard(), text_head=TextHead(384, WIDTH))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--out", str(tmp_path / "a"), "--videos", str(DATA)], "not a drca checkpoint"),
        (["--out", str(tmp_path / "a")], "exactly one of --videos"),
        (["--out", str(tmp_path / "a"), "--videos", str(DATA), "--stem-cache", str(DATA)], "exactly one of"),
        (["--out", str(out), "--videos", str(DATA)], "exists"),
        (["--out", str(tmp_path / "a"), "--videos", str(empty)], "holds no video file"),
        (["--out", str(tmp_path / "a"), "--videos", str(DATA), "--dim", "64"], r"in [1, 32]"),
        (["--out", str(tmp_path / "a"), "--videos", str(DATA), "--dim", "8"], "8 embeddings cannot fit a 8-d"),
        (["--out", str(tmp_path / "a"), "--videos", str(DATA), "--kind", "lda"], "--kind must be"),
        (["--out", str(tmp_path / "a"), "--stem-cache", str(empty)], "lite0"),
    ]
    for extra, want in cases:
        ckpt = str(tmp_path / "missing") if want == "not a drca checkpoint" else str(full)
        res = run_cli("--checkpoint", ckpt, *extra)
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and want in lines[0], (extra, res.output)
    res = run_cli("--checkpoint", str(with_text), "--out", str(tmp_path / "b"), "--videos", str(DATA))
    assert res.exit_code == 2 and "has a text head" in res.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
