"""Online reindex (`POST /v1/admin/reindex`, what `drca reindex --server URL` calls) on the embedded
service, with FAISS and with Milvus: while the new checkpoint re-embeds every video through the worker
and queue, searches answer 200 from the old generation; after the switch they come from the new one,
with the new model's vectors and labels, including a video uploaded during the reindex. The admin routes
need an admin key and a checkpoint inside an allowed directory (tests/service/test_hardening5.py)."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.encoding.encoder import VideoEncoder
from service.generations import checkpoint_identity, index_generations
from service.http.app import create_app
from tests.service.conftest import ingest, make_settings, upload, wait_job
from tests.service.media import CLASS_NAMES, distinct_videos, tiny_checkpoint
from tests.waiting import wait_until

NEW_CLASSES = ["alpha", "beta", "gamma", "delta", "epsilon"]
EMBED_DIM = 16  # tiny_checkpoint's
ADMIN_KEY = "admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def admin_settings(assets) -> dict[str, object]:
    """The admin routes on: an admin key, and the checkpoints' directory allowed."""
    return {"admin_keys": [ADMIN_KEY], "admin_checkpoint_dirs": [assets[1].parent]}


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    root = tmp_path_factory.mktemp("online-reindex")
    return (tiny_checkpoint(root / "old"), tiny_checkpoint(root / "new", NEW_CLASSES, seed=1),
            distinct_videos(root / "videos", 5, seconds=6, size=64))


@pytest.fixture(params=["faiss", "milvus"])
def backend(request: pytest.FixtureRequest) -> dict[str, str]:
    return {"index": request.param}


def test_searches_answer_from_the_old_generation_until_the_switch(assets, backend, tmp_path, monkeypatch):
    old, new, videos = assets
    settings = make_settings(old, tmp_path / "data", text_search=False, query_views=[], **backend,
                             **admin_settings(assets))
    forward = VideoEncoder.forward
    release = threading.Event()  # the new model embeds nothing until the searches mid-reindex are done

    def held_new_model(self, clips):
        if Path(self.settings.checkpoint) == new.resolve():
            assert release.wait(60), "the new model was never released"
        return forward(self, clips)

    monkeypatch.setattr(VideoEncoder, "forward", held_new_model)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c, contextlib.ExitStack() as held:
        held.callback(release.set)  # whatever happens, so that the worker can stop
        c.headers.update(ADMIN)  # no API keys: the other routes are open
        ids = [ingest(c, v) for v in videos[:4]]
        query = {"video_id": ids[0], "k": 10}
        before = c.post("/v1/search", json=query).json()
        assert len(before["hits"]) == 3  # the other videos (the query video itself is left out)
        old_labels = {v: c.get(f"/v1/videos/{v}").json()["labels"] for v in ids}
        assert all(lb["name"] in CLASS_NAMES for lbs in old_labels.values() for lb in lbs)

        r = c.post("/v1/admin/reindex", json={"checkpoint": str(new)})
        assert r.status_code == 202, r.text
        assert r.json()["state"] == "running" and r.json()["checkpoint"] == str(new.resolve())
        again = c.post("/v1/admin/reindex", json={"checkpoint": str(new)})  # the same: its progress
        assert again.status_code == 202 and again.json()["generation"] == c.get("/v1/admin/reindex").json()["generation"]
        late = upload(c, videos[4])  # uploaded during the reindex: indexed now, and re-embedded too
        assert late.status_code == 202, late.text

        during, after = [], []
        for _ in range(3):  # the reindex cannot finish before the new model is released
            resp = c.post("/v1/search", json=query)
            assert resp.status_code == 200, resp.text
            during.append(resp.json())
        assert c.get("/v1/admin/reindex").json()["state"] == "running"
        release.set()
        deadline = time.monotonic() + 120
        while True:
            state_before = c.get("/v1/admin/reindex").json()["state"]
            resp = c.post("/v1/search", json=query)
            state_after = c.get("/v1/admin/reindex").json()["state"]
            assert resp.status_code == 200, resp.text
            assert state_before != "failed", c.get("/v1/admin/reindex").json()
            if state_after == "running":
                during.append(resp.json())
            if state_before == "switched":
                after.append(resp.json())
                if len(after) >= 3:
                    break
            assert time.monotonic() < deadline, c.get("/v1/admin/reindex").json()
        assert wait_job(c, late.json()["job_id"])["status"] == "done"
        late_id = late.json()["video_id"]
        # until the switch: the old generation's answer (the late video may join it once indexed there)
        assert len(during) >= 3
        for d in during:
            assert [h for h in d["hits"] if h["video_id"] != late_id] == before["hits"]
        # after it: the new generation's (the late video joins once its job is done, if it was not yet)
        final = c.post("/v1/search", json=query).json()
        assert {h["video_id"] for h in final["hits"]} == {*ids[1:], late_id}
        new_hits = [h for h in final["hits"] if h["video_id"] != late_id]
        assert all([h for h in a["hits"] if h["video_id"] != late_id] == new_hits for a in after)
        assert [h["score"] for h in new_hits] != [h["score"] for h in before["hits"]]
        status = c.get("/v1/admin/reindex").json()
        # the late video counts if it was indexed before the switch (else the new model embedded it after)
        assert status["state"] == "switched" and status["done"] == status["videos"] in (4, 5) and not status["failed"]
        rt = c.app.state.service
        new_id = checkpoint_identity(new, EMBED_DIM)
        assert rt.active.current.index.metadata()["checkpoint_sha256"] == new_id.sha256 and len(rt.active.current.index) == 5
        for v in [*ids, late_id]:  # labels recomputed by the new model, the late video's too
            labels = c.get(f"/v1/videos/{v}").json()["labels"]
            assert labels and all(lb["name"] in NEW_CLASSES for lb in labels), (v, labels)
        # a new upload after the switch is embedded by the new model (its labels name the new classes)
        with open(videos[0], "rb") as f:
            classify = c.post("/v1/classify", files={"file": ("q.mp4", f)}).json()
        assert all(lb["name"] in NEW_CLASSES for lb in classify["labels"])
        again = c.post("/v1/admin/reindex", json={"checkpoint": str(new)})  # asked again: the result
        assert again.status_code == 202 and again.json() == status
        gens = index_generations(settings, EMBED_DIM)
        try:
            assert gens.current() == gens.name_for(new_id.short)
            previous = rt.active.current.index.metadata()["previous"]
            wait_until(lambda: not gens.exists(previous), 15, "the old generation dropped after the grace")
        finally:
            gens.close()
    assert not (settings.data_dir / "reindex-online.json").exists()
    assert not list(settings.data_dir.glob("reindex-*.labels.jsonl"))


def test_reindex_route_needs_a_key_and_a_checkpoint(assets, tmp_path):
    old, _new, _videos = assets
    settings = make_settings(old, tmp_path / "data", text_search=False, api_keys=["k1"], **admin_settings(assets))
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        assert c.post("/v1/admin/reindex", json={"checkpoint": str(old)}).status_code == 401
        assert c.get("/v1/admin/reindex").status_code == 401
        user = {"Authorization": "Bearer k1"}  # an API key is not an admin key
        assert c.post("/v1/admin/reindex", json={"checkpoint": str(old)}, headers=user).status_code == 403
        assert c.get("/v1/admin/reindex", headers=user).status_code == 403
        key = ADMIN
        r = c.post("/v1/admin/reindex", json={"checkpoint": str(tmp_path / "nothing")}, headers=key)
        assert r.status_code == 422 and r.json()["error"]["message"].startswith("checkpoint refused:")
        r = c.post("/v1/admin/reindex", json={"checkpoint": str(old)}, headers=key)
        assert r.status_code == 409 and "already made by" in r.json()["error"]["message"]
        r = c.post("/v1/admin/reindex", json={"path": str(old)}, headers=key)
        assert r.status_code == 422
        assert c.get("/v1/admin/reindex", headers=key).json()["state"] == "idle"


@pytest.mark.slow
@pytest.mark.parametrize("index", ["faiss", "milvus"])
def test_online_reindex_killed_resumes_at_restart_and_drca_reindex_server_follows_it(assets, index, tmp_path):
    """`drca serve` killed -9 mid-reindex: restarted (with the old checkpoint), it resumes from its state
    file and embeds only what the new generation lacks; `drca reindex --server` started after the restart
    follows it to the switch (the same checkpoint: its progress)."""
    import json
    import os
    import re
    import subprocess
    import sys

    import httpx

    from tests.procs import ROOT, HttpServer

    old, new, _ = assets
    videos = distinct_videos(tmp_path / "videos", 8, seconds=6, size=64)
    env = {"DRCA_CHECKPOINT": str(old), "DRCA_DATA_DIR": str(tmp_path / "data"), "DRCA_DEVICE": "cpu",
           "DRCA_TORCH_THREADS": "1", "DRCA_TEXT_SEARCH": "false", "DRCA_BATCH_SIZE": "1",
           "DRCA_DECODE_THREADS": "1", "DRCA_PREFETCH": "1", "DRCA_INDEX": index,
           "DRCA_ADMIN_KEYS": json.dumps([ADMIN_KEY]), "DRCA_ADMIN_CHECKPOINT_DIRS": json.dumps([str(new.parent)])}
    log = tmp_path / "serve.log"
    server = HttpServer([], log, env)
    server.start()
    try:
        with server.client() as c:
            ids = [ingest(c, v) for v in videos]
            assert c.post("/v1/admin/reindex", json={"checkpoint": str(new)}, headers=ADMIN).status_code == 202
            wait_until(lambda: re.search(r"video \d+: \d+ segments re-embedded", server.tail(1_000_000)), 60,
                       "a first video re-embedded", interval_s=0.005)
        server.kill()
        first = [int(v) for v in re.findall(r"video (\d+): \d+ segments re-embedded", log.read_text())]
        assert 1 <= len(first) < len(ids), f"{len(first)} re-embedded before the kill"
        assert (tmp_path / "data" / "reindex-online.json").exists()
        text_before = log.read_text()
        server.start()  # the old checkpoint again: it resumes
        cmd = [sys.executable, "-m", "cli.main", "reindex", "--server", server.url, "--checkpoint", str(new)]
        done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "DRCA_ADMIN_KEY": ADMIN_KEY},
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"{len(ids)} videos" in done.stdout and f"--checkpoint {new}" in done.stdout
        second = [int(v) for v in re.findall(r"video (\d+): \d+ segments re-embedded",
                                             log.read_text()[len(text_before):])]
        assert "resuming the online reindex" in log.read_text()[len(text_before):]
        assert not set(first) & set(second), "a video was re-embedded twice"
        assert sorted(first + second) == sorted(ids)
        r = httpx.get(server.url + "/v1/admin/reindex", headers=ADMIN).json()
        assert r["state"] == "switched" and r["done"] == len(ids)
        labels = httpx.get(f"{server.url}/v1/videos/{ids[0]}").json()["labels"]
        assert all(lb["name"] in NEW_CLASSES for lb in labels)
    finally:
        server.kill()
    # and the data dir now belongs to the new checkpoint: the old one is refused
    proc = subprocess.run([sys.executable, "-m", "cli.main", "serve", "--port", "1"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "drca reindex --checkpoint" in proc.stderr
