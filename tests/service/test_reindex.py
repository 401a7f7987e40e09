"""Checkpoint identity and `drca reindex`, with FAISS and with Milvus (`milvus-lite server` on loopback):
a data dir refuses another checkpoint (exit 2, one line), and an offline reindex killed mid-run and run
again ends with every video embedded once by the new checkpoint, its labels recomputed, the switch made."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.backends.sqlite import SQLiteMetadataStore
from service.generations import (
    CheckpointMismatch,
    check_identity,
    checkpoint_identity,
    index_generations,
    open_index,
)
from service.http.app import create_app
from tests.procs import ROOT, MilvusLiteServer, free_port
from tests.service.conftest import ingest, make_settings
from tests.service.media import CLASS_NAMES, SOURCES, lavfi_video, tiny_checkpoint

NEW_CLASSES = ["alpha", "beta", "gamma", "delta", "epsilon"]
EMBED_DIM = 16  # tiny_checkpoint's


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return tiny_checkpoint(root / "old"), tiny_checkpoint(root / "new", NEW_CLASSES, seed=1)


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusLiteServer]:
    server = MilvusLiteServer(tmp_path_factory.mktemp("milvus-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["faiss", "milvus"])
def backend(request: pytest.FixtureRequest) -> dict[str, str]:
    """Index settings: FAISS in the data dir, or a collection in a `milvus-lite server` (a Lite file would
    stay locked by this test process, which builds the data dir)."""
    if request.param == "faiss":
        return {"index": "faiss"}
    return {"index": "milvus", "milvus_uri": request.getfixturevalue("milvus_server").uri}


def env_for(data_dir: Path, checkpoint: Path, backend: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DRCA_DATA_DIR": str(data_dir), "DRCA_CHECKPOINT": str(checkpoint),
           "DRCA_DEVICE": "cpu", "DRCA_TORCH_THREADS": "1", "DRCA_BATCH_SIZE": "8"}
    env.update({f"DRCA_{k.upper()}": v for k, v in backend.items()})
    return env


def test_another_checkpoint_on_the_data_dir_exits_2_with_one_line(checkpoints, backend, tmp_path: Path):
    old, new = checkpoints
    data = tmp_path / "data"
    settings = make_settings(old, data, text_search=False, **backend)
    old_id = checkpoint_identity(old, EMBED_DIM)
    index, _ = open_index(settings, old_id)  # records the old checkpoint
    index.close()
    proc = subprocess.run([sys.executable, "-m", "cli.main", "serve", "--checkpoint", str(new), "--port",
                           str(free_port())], cwd=ROOT, env=env_for(data, old, backend), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    new_id = checkpoint_identity(new, EMBED_DIM)
    line = lines[0]
    assert line.startswith("error: ") and old_id.short in line and new_id.short in line
    assert str(old.resolve()) in line and f"drca reindex --checkpoint {new.resolve()}" in line
    # the same checkpoint passes
    check_identity(settings, old_id)


def test_offline_reindex_killed_and_rerun_embeds_every_video_once(checkpoints, backend, tmp_path: Path):
    old, new = checkpoints
    data = tmp_path / "data"
    videos = [lavfi_video(tmp_path / f"{name}.mp4", src) for name, src in SOURCES.items()]
    videos.append(lavfi_video(tmp_path / "long.mp4", "testsrc2=size=64x64:rate=5:duration=9"))
    settings = make_settings(old, data, text_search=False, **backend)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        ids = [ingest(c, p) for p in videos]
    store = SQLiteMetadataStore(settings.store_path)
    segments = {v.video_id: v.extra["segments"] for v in store.list_videos(limit=100)}
    assert all(lb.name in CLASS_NAMES for v in store.list_videos(limit=100) for lb in v.labels)
    store.close()
    old_gen = index_generations(settings, EMBED_DIM)
    old_name = old_gen.current()
    old_gen.close()
    index, _ = open_index(settings, checkpoint_identity(old, EMBED_DIM))
    old_vectors = {vid: index.get(vid).vectors for vid in ids}
    index.close()

    cmd = [sys.executable, "-m", "cli.main", "reindex", "--checkpoint", str(new)]
    env = env_for(data, old, backend)
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done_first: list[int] = []
    for line in first.stderr:
        if m := re.search(r"video (\d+): \d+ segments re-embedded", line):
            done_first.append(int(m.group(1)))
            first.send_signal(signal.SIGKILL)  # mid-run: one video in, the rest to do
            break
    first.wait(60)
    assert first.returncode == -signal.SIGKILL, f"reindex ended ({first.returncode}) before it was killed"
    done_first += [int(m) for m in re.findall(r"video (\d+): \d+ segments re-embedded", first.stderr.read())]

    gens = index_generations(settings, EMBED_DIM)
    assert gens.current() == old_name  # not switched
    gens.close()

    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    done_second = [int(m) for m in re.findall(r"video (\d+): \d+ segments re-embedded", second.stderr)]
    assert not set(done_first) & set(done_second), "a video was embedded and added twice"
    assert sorted(done_first + done_second) == sorted(ids)

    new_id = checkpoint_identity(new, EMBED_DIM)
    gens = index_generations(settings, EMBED_DIM)
    assert gens.current() == gens.name_for(new_id.short)
    assert not gens.exists(old_name)  # the old generation was dropped after the switch
    gens.close()
    with pytest.raises(CheckpointMismatch):
        check_identity(settings, checkpoint_identity(old, EMBED_DIM))
    new_settings = make_settings(new, data, text_search=False, **backend)
    index, _ = open_index(new_settings, new_id)
    try:
        assert len(index) == len(ids)
        assert index.count_segments() == sum(segments.values())  # each segment once
        for vid in ids:
            got = index.get(vid)
            assert len(got.segments) == segments[vid]
            assert not np.allclose(got.vectors, old_vectors[vid], atol=1e-3)  # the new model's vectors
    finally:
        index.close()
    store = SQLiteMetadataStore(settings.store_path)
    for v in store.list_videos(limit=100):
        assert v.status == "indexed" and v.labels and all(lb.name in NEW_CLASSES for lb in v.labels)
    store.close()
    assert not list(data.glob("reindex-*.labels.jsonl"))
