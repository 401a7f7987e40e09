"""The compact embedding through the service: both runtimes apply the checkpoint's reduction alike; a data
dir indexed with one reduction refuses a checkpoint with another (same network, same config, other fitted
tensors) until `drca reindex`; and the reindexed collection answers every query as a fresh ingest with the
new checkpoint does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from model.checkpoint import read_checkpoint
from service.active import identity_of, read_serving_checkpoint
from service.encoding.encoder import VideoEncoder
from service.encoding.inference import TorchRunner
from service.generations import CheckpointMismatch, check_identity, checkpoint_identity
from service.http.app import create_app
from service.reindex import reindex
from tests.model.test_reduction import tiny_feature_checkpoint
from tests.procs import ROOT, free_port
from tests.service.conftest import ingest, make_settings
from tests.service.media import SOURCES, lavfi_video, near_duplicate
from tests.service.test_reindex import env_for
from training.reduce import reduce_checkpoint

DATA = Path(__file__).parents[1] / "data"
CLIPS = ("tiger", "car", "capitol", "sailboat")
DIM = 8


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`full` (the 32-d feature), and two whitening fits of it to 8-d on different segments of the same clips:
    the same network and config.json, other reduction tensors."""
    root = tmp_path_factory.mktemp("ckpts")
    full = tiny_feature_checkpoint(root / "full")
    a = reduce_checkpoint(full, root / "whiten_a", DIM, "whiten", videos=DATA, stride_s=1.0).path
    b = reduce_checkpoint(full, root / "whiten_b", DIM, "whiten", videos=DATA, stride_s=0.5,
                          views=("original", "mirrored")).path
    return {"full": full, "a": a, "b": b}


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    """The database (the committed real clips and two generated ones) and the queries (each database video
    itself and a re-encoded, cropped copy of it)."""
    root = tmp_path_factory.mktemp("videos")
    db = [DATA / f"{c}.mp4" for c in CLIPS]
    db += [lavfi_video(root / f"{name}.mp4", SOURCES[name]) for name in ("bars", "life")]
    queries = db + [near_duplicate(p, root / f"{p.stem}_copy.mp4") for p in db]
    return db, queries


def test_both_runtimes_apply_the_reduction_alike(checkpoints: dict[str, Path], tmp_path: Path):
    files = read_checkpoint(checkpoints["a"], weights=True)
    ov = VideoEncoder(make_settings(checkpoints["a"], tmp_path / "data", text_search=False, runtime="openvino"),
                      files)
    assert ov.runner.name == "openvino" and ov.embed_dim == DIM
    ref = TorchRunner(ov.model, torch.device("cpu"))
    clips = torch.cat([ov.decode(DATA / f"{c}.mp4", query=True).clips for c in CLIPS])
    got, want = ov.runner(clips).embedding, ref(clips).embedding
    assert got.shape == want.shape == (len(clips), DIM)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # L2-normalised after the reduction
    cos = (got * want).sum(1)
    assert cos.min() > 0.9999, cos
    # and it is the reduction of the full-width feature, not the feature itself
    with torch.no_grad():
        full = ov.model.reduction
        ov.model.reduction = None
        wide = ref(clips).embedding
        ov.model.reduction = full
    assert wide.shape == (len(clips), 32)
    y = (wide - full.mean.numpy()) @ full.projection.numpy().T
    np.testing.assert_allclose(want, y / np.linalg.norm(y, axis=1, keepdims=True), atol=1e-5)


def search_all(client: TestClient, queries: list[Path]) -> list[list[tuple[str, float]]]:
    out = []
    for q in queries:
        with open(q, "rb") as f:
            r = client.post("/v1/search", files={"file": (q.name, f, "video/mp4")}, data={"k": "5"})
        assert r.status_code == 200, r.text
        out.append([(h["external_id"], h["score"]) for h in r.json()["hits"]])
    return out


def test_another_reduction_is_refused_until_reindex_which_then_answers_as_a_fresh_ingest(
        checkpoints: dict[str, Path], videos: tuple[list[Path], list[Path]], tmp_path: Path):
    db, queries = videos
    a, b = checkpoints["a"], checkpoints["b"]
    assert (a / "config.json").read_text() == (b / "config.json").read_text()  # only the tensors differ
    data = tmp_path / "data"
    settings = make_settings(a, data, text_search=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        for p in db:
            ingest(c, p, external_id=p.stem)

    # the other reduction (and the full-width checkpoint) are refused: in process, and by `drca serve`
    for other in (b, checkpoints["full"]):
        with pytest.raises(CheckpointMismatch, match="drca reindex"):
            check_identity(settings, identity_of(read_serving_checkpoint(other, weights=False)))
    with pytest.raises(CheckpointMismatch), TestClient(create_app(make_settings(b, data, text_search=False))):
        pass
    proc = subprocess.run([sys.executable, "-m", "cli.main", "serve", "--checkpoint", str(b), "--port",
                           str(free_port())], cwd=ROOT, env=env_for(data, a, {"index": "faiss"}),
                          capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert checkpoint_identity(b, DIM).short in lines[0] and f"drca reindex --checkpoint {b.resolve()}" in lines[0]

    summary = reindex(settings, read_serving_checkpoint(b, weights=True), progress=False)
    assert summary.videos == summary.embedded == len(db)
    with pytest.raises(CheckpointMismatch):
        check_identity(settings, checkpoint_identity(a, DIM))
    reindexed_settings = make_settings(b, data, text_search=False)
    with TestClient(create_app(reindexed_settings), raise_server_exceptions=False) as c:
        reindexed = search_all(c, queries)

    fresh_settings = make_settings(b, tmp_path / "fresh", text_search=False)
    with TestClient(create_app(fresh_settings), raise_server_exceptions=False) as c:
        for p in db:
            ingest(c, p, external_id=p.stem)
        fresh = search_all(c, queries)
    assert [r[0][0] for r in reindexed] == [f[0][0] for f in fresh]  # the same top-1 for every query
    for r, f in zip(reindexed, fresh, strict=True):  # and the same ranking and scores
        assert [h for h, _ in r] == [h for h, _ in f]
        np.testing.assert_allclose([s for _, s in r], [s for _, s in f], atol=1e-5)
    assert [r[0][0] for r in reindexed[: len(db)]] == [p.stem for p in db]  # each video finds itself first


@pytest.mark.slow
def test_the_shipped_network_with_a_reduction_matches_across_runtimes(tmp_path: Path):
    """The lite0 hybrid's graph with a reduction (a fit on random data: only the tensors matter here):
    OpenVINO f32 against torch on the committed real clips."""
    from model import SHIPPED_CHECKPOINT
    from model.checkpoint import load_checkpoint, save_checkpoint
    from model.reduction import fit_reduction
    from training.reduce import with_reduction

    ck = load_checkpoint(SHIPPED_CHECKPOINT)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 1280)) @ rng.standard_normal((1280, 1280)) * 0.1 + 1
    fit = fit_reduction(x / np.linalg.norm(x, axis=1, keepdims=True), 64, "whiten")
    path = save_checkpoint(tmp_path / "reduced", with_reduction(ck.model, fit), ck.card.model_copy(update={"match": None}))
    enc = VideoEncoder(make_settings(path, tmp_path / "data", text_search=False, runtime="openvino",
                                     max_pixels=4096 * 2304), read_checkpoint(path, weights=True))
    clips = torch.cat([enc.decode(DATA / f"{c}.mp4").clips for c in CLIPS])
    got, want = enc.runner(clips), TorchRunner(enc.model, torch.device("cpu"))(clips)
    assert got.embedding.shape == want.embedding.shape == (len(clips), 64)
    assert (got.embedding * want.embedding).sum(1).min() > 0.9999
    np.testing.assert_array_equal(got.saliency_indices, want.saliency_indices)
