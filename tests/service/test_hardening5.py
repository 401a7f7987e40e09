"""Issue 27, group 2, against a real `drca serve` on loopback: the admin surface (G1: off without a
separate admin key, API keys refused, checkpoints only from allow-listed directories; G2: a checkpoint
named in a request is checked off the request threads, regular files only, and a failed or invalid
online reindex never resumes at restart; G3: one 422 for every bad path, no path echoed, no 500) and the
memory of an extreme aspect ratio (G4)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.procs import ROOT, HttpServer, wait_jobs
from tests.service.media import distinct_videos, tiny_checkpoint
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

ADMIN_KEY = "admin-key-0123456789"
USER_KEY = "user-key-0123456789"
NEW_CLASSES = ["alpha", "beta", "gamma", "delta", "epsilon"]
PROMPT_S = 10.0  # an answer about a bad checkpoint comes within this, whatever the file is


class Serve(HttpServer):
    """`drca serve` (embedded) with the tiny checkpoint, its own data dir and log."""

    def __init__(self, checkpoint: Path, data_dir: Path, log: Path, **env: str) -> None:
        super().__init__(["--checkpoint", str(checkpoint), "--data-dir", str(data_dir), "--device", "cpu"], log,
                         {"DRCA_TORCH_THREADS": "1", "DRCA_MAX_WAIT_MS": "5", "DRCA_TEXT_SEARCH": "false",
                          "DRCA_QUERY_VIEWS": "[]", "DRCA_DECODE_THREADS": "1", **env})

    def peak_rss_mb(self) -> float:
        return _status_kb(self.proc.pid, "VmHWM") / 1024

    def reset_peak_rss(self) -> float:
        """The kernel's peak-RSS mark set to the current RSS (`clear_refs` 5); the current RSS in MB."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        return _status_kb(self.proc.pid, "VmRSS") / 1024


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _copy_card(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("config.json", "card.json"):
        shutil.copy(src / name, dst / name)
    return dst


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The server's checkpoint (outside the allowed directory), an allowed directory with a good new
    checkpoint and hostile ones, and key files."""
    root = tmp_path_factory.mktemp("admin")
    allowed = root / "allowed"
    new = tiny_checkpoint(allowed / "new", NEW_CLASSES, seed=1)
    fifo = _copy_card(new, allowed / "fifo")
    os.mkfifo(fifo / "model.safetensors")
    zero = _copy_card(new, allowed / "zero")
    (zero / "model.safetensors").symlink_to("/dev/zero")
    garbage = _copy_card(new, allowed / "garbage")  # a regular file that is no safetensors: the load fails
    (garbage / "model.safetensors").write_bytes(os.urandom(4096))
    (allowed / "loop").symlink_to(allowed / "loop")
    old = tiny_checkpoint(root / "old")
    (allowed / "escape").symlink_to(old)  # a link out of the allowed directory
    (root / "admin.key").write_text(f"# the admin key\n{ADMIN_KEY}\n")
    (root / "user.key").write_text(f"{USER_KEY}\n")
    return {"root": root, "allowed": allowed, "new": new, "old": old, "fifo": fifo, "zero": zero,
            "garbage": garbage, "videos": root / "videos"}


def admin_env(assets: dict[str, Path], **more: str) -> dict[str, str]:
    """API keys, a separate admin key (from a file) and the allowed checkpoint directory."""
    return {"DRCA_API_KEYS": json.dumps([USER_KEY]), "DRCA_ADMIN_KEYS_FILE": str(assets["root"] / "admin.key"),
            "DRCA_ADMIN_CHECKPOINT_DIRS": json.dumps([str(assets["allowed"])]), **more}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def admin_server(assets, tmp_path_factory) -> HttpServer:
    data = tmp_path_factory.mktemp("admin-data")
    # 40 requests at once (G2) must all reach the route: above the default 32 bodies at once (503 past it),
    # and past the admin POSTs' rate limit (tests/service/test_admin_data_dir.py tests it)
    server = Serve(assets["old"], data, data.parent / f"{data.name}.log", **admin_env(assets),
                   DRCA_MAX_CONCURRENT_UPLOADS="64", DRCA_ADMIN_RATE_LIMIT_PER_S="0")
    server.start()
    yield server
    server.stop()


def _reindex(server: HttpServer, checkpoint: str | Path, key: str | None = ADMIN_KEY,
             timeout_s: float = PROMPT_S) -> httpx.Response:
    return httpx.post(server.url + "/v1/admin/reindex", json={"checkpoint": str(checkpoint)},
                      headers=bearer(key) if key else {}, timeout=timeout_s)


def _error(r: httpx.Response) -> dict:
    assert r.headers["content-type"].startswith("application/json"), r.text
    return r.json()["error"]


# G1 ------------------------------------------------------------------------------------------------------
def test_g1_admin_routes_are_off_without_an_admin_key(assets, tmp_path):
    """The default, open mode: the admin routes answer 403 `admin_disabled` (a JSON error saying how to
    turn them on), with or without credentials; the index keeps its checkpoint. With API keys but no admin
    key, the same for every API key."""
    server = Serve(assets["old"], tmp_path / "data", tmp_path / "serve.log")
    server.start()
    try:
        for key in (None, ADMIN_KEY, USER_KEY):
            r = _reindex(server, assets["new"], key)
            assert r.status_code == 403, r.text
            err = _error(r)
            assert err["code"] == "admin_disabled" and "DRCA_ADMIN_KEYS" in err["message"], err
            r = httpx.get(server.url + "/v1/admin/reindex", headers=bearer(key) if key else {})
            assert r.status_code == 403 and _error(r)["code"] == "admin_disabled", r.text
        assert not (tmp_path / "data" / "reindex-online.json").exists()
        assert not list((tmp_path / "data").glob("index.*")), "a new generation was created"
    finally:
        server.stop()
    server = Serve(assets["old"], tmp_path / "data", tmp_path / "serve2.log", DRCA_API_KEYS=json.dumps([USER_KEY]))
    server.start()
    try:
        r = _reindex(server, assets["new"], USER_KEY)
        assert r.status_code == 403 and _error(r)["code"] == "admin_disabled", r.text
    finally:
        server.stop()


def test_g1_only_an_admin_key_passes(admin_server, assets):
    for key, status in ((None, 401), ("not-a-key", 401), (USER_KEY, 403)):
        r = _reindex(admin_server, assets["new"], key)
        assert r.status_code == status, (key, r.text)
        assert _error(r)["code"] in ("unauthorized", "forbidden"), r.text
        r = httpx.get(admin_server.url + "/v1/admin/reindex", headers=bearer(key) if key else {})
        assert r.status_code == status, (key, r.text)
    r = httpx.get(admin_server.url + "/v1/admin/reindex", headers=bearer(ADMIN_KEY))
    assert r.status_code == 200 and r.json()["state"] == "idle", r.text
    # the admin key opens the admin routes only: the user routes want an API key
    assert httpx.get(admin_server.url + "/v1/videos", headers=bearer(ADMIN_KEY)).status_code == 401
    assert httpx.get(admin_server.url + "/v1/videos", headers=bearer(USER_KEY)).status_code == 200


def test_g1_a_checkpoint_outside_the_allowed_directories_is_refused(admin_server, assets):
    """The server's own checkpoint is a real one, but outside the allowed directory (and so is the target
    of the `escape` link inside it)."""
    for path in (assets["old"], assets["allowed"] / "escape"):
        r = _reindex(admin_server, path)
        assert r.status_code == 422, r.text
        assert _error(r)["message"].startswith("checkpoint refused:"), r.text
    r = httpx.get(admin_server.url + "/v1/admin/reindex", headers=bearer(ADMIN_KEY))
    assert r.json()["state"] == "idle", r.text


def test_g1_no_allowed_directory_refuses_every_checkpoint(assets, tmp_path):
    env = admin_env(assets)
    del env["DRCA_ADMIN_CHECKPOINT_DIRS"]
    server = Serve(assets["old"], tmp_path / "data", tmp_path / "serve.log", **env)
    server.start()
    try:
        r = _reindex(server, assets["new"])
        assert r.status_code == 422, r.text
        assert "DRCA_ADMIN_CHECKPOINT_DIRS" in _error(r)["message"], r.text
    finally:
        server.stop()


def test_g1_drca_reindex_server_works_with_the_admin_key(assets, tmp_path):
    """`drca reindex --server` with the admin key (DRCA_ADMIN_KEY, or --admin-key-file) re-embeds the
    videos with the allowed checkpoint and follows the reindex to the switch; with the API key it stops
    at the 403."""
    videos = distinct_videos(tmp_path / "videos", 2, seconds=6, size=64)
    server = Serve(assets["old"], tmp_path / "data", tmp_path / "serve.log", **admin_env(assets))
    server.start()
    try:
        with server.client() as c:
            c.headers.update(bearer(USER_KEY))
            jobs = []
            for v in videos:
                with open(v, "rb") as f:
                    r = c.post("/v1/videos", files={"file": (v.name, f, "video/mp4")})
                assert r.status_code == 202, r.text
                jobs.append(r.json()["job_id"])
            assert all(j["status"] == "done" for j in wait_jobs(c, jobs).values())
        cmd = [sys.executable, "-m", "cli.main", "reindex", "--server", server.url, "--checkpoint", str(assets["new"])]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("DRCA_ADMIN_KEY", None)
        refused = subprocess.run(cmd, cwd=ROOT, env={**env, "DRCA_ADMIN_KEY": USER_KEY}, capture_output=True,
                                 text=True, timeout=120)
        assert refused.returncode == 1 and "403" in refused.stderr, refused.stderr
        done = subprocess.run([*cmd, "--admin-key-file", str(assets["root"] / "admin.key")], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "2 videos" in done.stdout, done.stdout
        r = httpx.get(server.url + "/v1/admin/reindex", headers=bearer(ADMIN_KEY)).json()
        assert r["state"] == "switched" and r["done"] == 2, r
        again = subprocess.run(cmd, cwd=ROOT, env={**env, "DRCA_ADMIN_KEY": ADMIN_KEY}, capture_output=True,
                               text=True, timeout=120)
        assert again.returncode == 0, again.stderr  # the same checkpoint: its result
    finally:
        server.stop()


# G2 ------------------------------------------------------------------------------------------------------
def test_g2_a_fifo_checkpoint_is_a_prompt_422_and_the_server_keeps_answering(admin_server, assets):
    """`model.safetensors` a FIFO: 40 requests at once each get a prompt 422 (the server neither blocks
    on the FIFO nor runs out of threads), and /healthz and the other routes answer meanwhile and after."""
    def post(_: int) -> tuple[int, float]:
        t0 = time.monotonic()
        try:
            r = _reindex(admin_server, assets["fifo"], timeout_s=2 * PROMPT_S)
        except httpx.TimeoutException:
            return 0, time.monotonic() - t0
        return r.status_code, time.monotonic() - t0

    with ThreadPoolExecutor(40) as pool:
        results = list(pool.map(post, range(40)))
        assert httpx.get(admin_server.url + "/healthz", timeout=PROMPT_S).status_code == 200
    assert all(status == 422 for status, _ in results), [r for r in results if r[0] != 422]
    assert max(s for _, s in results) < PROMPT_S, results
    assert httpx.get(admin_server.url + "/healthz", timeout=PROMPT_S).status_code == 200
    r = httpx.get(admin_server.url + "/v1/videos", headers=bearer(USER_KEY), timeout=PROMPT_S)
    assert r.status_code == 200, r.text
    r = httpx.get(admin_server.url + "/v1/admin/reindex", headers=bearer(ADMIN_KEY), timeout=PROMPT_S)
    assert r.json()["state"] == "idle", r.text


def test_g2_a_link_to_dev_zero_is_a_prompt_422(admin_server, assets):
    t0 = time.monotonic()
    r = _reindex(admin_server, assets["zero"])
    assert r.status_code == 422 and time.monotonic() - t0 < PROMPT_S, r.text
    assert "model.safetensors" in _error(r)["message"], r.text
    assert httpx.get(admin_server.url + "/healthz", timeout=PROMPT_S).status_code == 200


def test_g2_a_failed_reindex_is_cleared_and_a_restart_starts(assets, tmp_path):
    """A checkpoint whose weights do not load fails after its 202: the state file goes with it, and the
    restarted server does not try it again."""
    data = tmp_path / "data"
    server = Serve(assets["old"], data, tmp_path / "serve.log", **admin_env(assets))
    server.start()
    try:
        r = _reindex(server, assets["garbage"])
        assert r.status_code == 202, r.text
        status = wait_until(lambda: (s := httpx.get(server.url + "/v1/admin/reindex", headers=bearer(ADMIN_KEY))
                                     .json())["state"] == "failed" and s, 60, "the reindex failed")
        assert "safetensors" in status["error"], status
        assert not (data / "reindex-online.json").exists()
    finally:
        server.stop()
    text_before = server.tail(1_000_000)
    server.start(timeout_s=60)
    try:
        assert "resuming the online reindex" not in server.tail(1_000_000)[len(text_before):]
        r = httpx.get(server.url + "/v1/admin/reindex", headers=bearer(ADMIN_KEY))
        assert r.json()["state"] == "idle", r.text
    finally:
        server.stop()


@pytest.mark.parametrize("target", ["fifo", "zero", "garbage-path", "outside"])
def test_g2_a_state_file_naming_an_invalid_checkpoint_is_dropped_at_start(assets, tmp_path, target):
    """What a kill -9 mid-reindex leaves, naming a checkpoint that is (now) a FIFO, a link to /dev/zero,
    a path that resolves nowhere or one outside the allowed directories: the server starts, says why in
    its log, and removes the file."""
    data = tmp_path / "data"
    data.mkdir()
    checkpoint = {"fifo": assets["fifo"], "zero": assets["zero"], "garbage-path": "/proc/self/fd/9\x00",
                  "outside": assets["old"]}[target]
    state = data / "reindex-online.json"
    state.write_text(json.dumps({"checkpoint": str(checkpoint), "generation": "index.0123456789ab",
                                 "checkpoint_sha256": "0" * 64}))
    server = Serve(assets["old"], data, tmp_path / "serve.log", **admin_env(assets))
    try:
        server.start(timeout_s=60)
        assert not state.exists()
        assert re.search(r"the online reindex in .*reindex-online.json is not resumed", server.tail()), server.tail()
        r = httpx.get(server.url + "/v1/admin/reindex", headers=bearer(ADMIN_KEY))
        assert r.json()["state"] == "idle", r.text
    finally:
        server.kill()


# G3 ------------------------------------------------------------------------------------------------------
def test_g3_every_bad_path_is_the_same_422(admin_server, assets):
    """/proc links, a PermissionError, a NUL byte, a 5,000-character path, a symlink loop and missing
    paths, inside the allowed directory or not: the same 422, with one message that names no path; no
    500, and the log holds no traceback."""
    log_before = len(admin_server.tail(10_000_000))
    allowed = assets["allowed"]
    bad = ["/proc/self/fd/9", "/proc/self/cwd", "/proc/1/cwd", "/proc/self/root/etc", "a\x00b",
           str(allowed / "new\x00"), "/" + "a" * 5000, str(allowed / ("a" * 5000)), str(allowed / "loop"),
           str(allowed / "missing"), "/nonexistent/ckpt", "relative/ckpt", "", str(allowed / "new" / "config.json"),
           str(allowed / ".." / "old"), str(allowed / "new" / ".." / ".." / "old")]
    bodies = []
    for path in bad:
        r = _reindex(admin_server, path)
        assert r.status_code == 422, (path[:80], r.text)
        bodies.append(r.json())
    assert all(b == bodies[0] for b in bodies), [b["error"]["message"] for b in bodies]
    message = bodies[0]["error"]["message"]
    assert message.startswith("checkpoint refused:"), message
    assert "/" not in message.replace("DRCA_ADMIN_CHECKPOINT_DIRS", ""), message
    log = admin_server.tail(10_000_000)[log_before:]
    assert "Traceback" not in log and "/proc/" not in log and "aaaaaaaaaa" not in log, log[-3000:]


# G4 ------------------------------------------------------------------------------------------------------
def checkpoint_224(path: Path) -> Path:
    """A tiny DRCA that takes 224x224 frames, as the shipped checkpoint does (the tiny test checkpoint's 32x32
    would never scale a 32-pixel side up)."""
    import torch

    from model.checkpoint import ModelCard, save_checkpoint
    from model.config import BackboneConfig, DRCAConfig, HeadConfig, InputConfig
    from model.drca import DRCA
    from tests.service.media import CLASS_NAMES

    torch.manual_seed(0)
    cfg = DRCAConfig(name="tiny-224", input=InputConfig(num_frames=4, img_size=224),
                     backbone=BackboneConfig(patch_size=28, embed_dim=32, depth=2, num_heads=2, drop_path=0.0,
                                             comp_insert_layer=1, num_saliency=2, num_samples=20, sigma=0.05,
                                             sal_ref_heads=2),
                     head=HeadConfig(num_classes=len(CLASS_NAMES), embed_dim=16))
    card = ModelCard(preset="tiny-224", class_names=list(CLASS_NAMES), training_data="none (random init, tests only)")
    return save_checkpoint(path, DRCA(cfg).eval(), card)


def test_g4_a_32x8192_video_is_indexed_and_searched_in_bounded_memory(tmp_path):
    """`testsrc2=size=32x8192` (a 200 KB file): the upload is accepted and indexed, and a search with it
    answers 200 with it first; the server's peak RSS grows by at most 300 MB for each (it grew by about 1.5
    GB per 8-frame clip when the whole frame was scaled in float: 224x57,344 pixels a frame)."""
    from tests.service.media import H264, ffmpeg, lavfi_video

    tall = tmp_path / "tall.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=32x8192:rate=10", "-t", "8", *H264, str(tall))
    small = lavfi_video(tmp_path / "small.mp4", "testsrc2=size=64x48:rate=10", "-t", "8")
    server = Serve(checkpoint_224(tmp_path / "ckpt"), tmp_path / "data", tmp_path / "serve.log",
                   DRCA_QUERY_VIEWS='["mirrored", "inner"]')
    server.start()
    try:
        with server.client() as c:
            def upload(path: Path) -> int:
                with open(path, "rb") as f:
                    r = c.post("/v1/videos", files={"file": (path.name, f, "video/mp4")})
                assert r.status_code == 202, r.text
                job = wait_jobs(c, [r.json()["job_id"]], procs=(server,))[r.json()["job_id"]]
                assert job["status"] == "done", job
                return r.json()["video_id"]

            def search(path: Path) -> list[dict]:
                with open(path, "rb") as f:
                    r = c.post("/v1/search", files={"file": (path.name, f, "video/mp4")}, data={"k": "2"})
                assert r.status_code == 200, r.text
                return r.json()["hits"]

            upload(small)  # warm up every path once with an ordinary video
            search(small)
            base = server.reset_peak_rss()
            tall_id = upload(tall)
            ingest_growth = server.peak_rss_mb() - base
            base = server.reset_peak_rss()
            hits = search(tall)
            search_growth = server.peak_rss_mb() - base
        assert hits[0]["video_id"] == tall_id, hits
        assert ingest_growth <= 300 and search_growth <= 300, (ingest_growth, search_growth)
    finally:
        server.stop()


# the settings and the check's deadline, in process ---------------------------------------------------------
def test_an_admin_key_must_differ_from_every_api_key(tmp_path):
    from pydantic import ValidationError

    from service.settings import Settings

    with pytest.raises(ValidationError, match="admin key is also an API key"):
        Settings(checkpoint=tmp_path, data_dir=tmp_path, api_keys=["same"], admin_keys=["same"])
    with pytest.raises(ValidationError, match="admin_keys must not contain empty keys"):
        Settings(checkpoint=tmp_path, data_dir=tmp_path, admin_keys=[""])
    (tmp_path / "admin.key").write_text("from-file\n")
    s = Settings(checkpoint=tmp_path, data_dir=tmp_path, admin_keys_file=tmp_path / "admin.key")
    assert [k.get_secret_value() for k in s.admin_keys] == ["from-file"] and "from-file" not in repr(s)


def test_a_check_past_its_deadline_is_a_503_and_frees_its_slot_when_done(tmp_path, monkeypatch):
    """A check that cannot finish (a hung network file system, here a read that waits on an event) answers
    503 at the deadline; the request does not wait for it, and its slot is freed once it returns."""
    import asyncio
    import threading

    from service import admin_checkpoint
    from service.errors import ServiceError
    from service.settings import Settings

    release = threading.Event()
    real = admin_checkpoint.vet_for

    def hung(settings, given, *rest):
        release.wait(30)
        return real(settings, given, *rest)

    monkeypatch.setattr(admin_checkpoint, "vet_for", hung)
    settings = Settings(checkpoint=tmp_path, data_dir=tmp_path, admin_checkpoint_dirs=[tmp_path],
                        admin_checkpoint_check_s=0.3)
    t0 = time.monotonic()
    with pytest.raises(ServiceError) as e:
        asyncio.run(admin_checkpoint.vet_in_background(settings, str(tmp_path / "x")))
    assert e.value.status == 503 and e.value.code == "checkpoint_check_timeout" and time.monotonic() - t0 < 5
    release.set()
    wait_until(lambda: admin_checkpoint._pending._value == admin_checkpoint.MAX_PENDING, 10, "the slot freed")
