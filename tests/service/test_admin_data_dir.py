"""Issue 27, group 2, against a real `drca serve` on loopback: a failed online reindex leaves nothing and
says why without server paths (G7); a damaged data dir stops the start with one line, exit 2, and a
current generation gone while the store holds indexed videos is refused (G8); a checkpoint already hashed
is not read again, the admin POST is rate-limited and its 409 names no path or sha (G10); the admin body
takes JSON only with no unknown field, thumbnails are bounded in height too, and a second process on a
Milvus Lite file stops with one line (G11)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.procs import ROOT, HttpServer, free_port, wait_jobs
from tests.service.media import H264, distinct_videos, ffmpeg, lavfi_video, tiny_checkpoint
from tests.service.test_hardening5 import NEW_CLASSES, PROMPT_S, USER_KEY, Serve, bearer
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

ADMIN_KEY = "admin-key-0123456789"
RATE_KEY = "admin-key-for-the-rate-limit"  # a bucket of its own: the rate-limit test spends only its tokens


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The server's checkpoint (outside the allowed directory), an allowed directory with a good new
    checkpoint and two whose weights do not load, and a key file with two admin keys."""
    root = tmp_path_factory.mktemp("admin-dd")
    allowed = root / "allowed"
    new = tiny_checkpoint(allowed / "new", NEW_CLASSES, seed=1)
    garbage = []
    for name in ("garbage1", "garbage2"):  # a regular file that is no safetensors: the load fails after the 202
        d = allowed / name
        d.mkdir()
        for f in ("config.json", "card.json"):
            shutil.copy(new / f, d / f)
        (d / "model.safetensors").write_bytes(os.urandom(4096))
        garbage.append(d)
    (root / "admin.key").write_text(f"{ADMIN_KEY}\n{RATE_KEY}\n")
    return {"root": root, "allowed": allowed, "new": new, "garbage1": garbage[0], "garbage2": garbage[1],
            "old": tiny_checkpoint(root / "old")}


def admin_env(assets: dict[str, Path], **more: str) -> dict[str, str]:
    return {"DRCA_API_KEYS": json.dumps([USER_KEY]), "DRCA_ADMIN_KEYS_FILE": str(assets["root"] / "admin.key"),
            "DRCA_ADMIN_CHECKPOINT_DIRS": json.dumps([str(assets["allowed"])]), **more}


def _post(server: HttpServer, checkpoint: str | Path, key: str = ADMIN_KEY, **extra: object) -> httpx.Response:
    return httpx.post(server.url + "/v1/admin/reindex", json={"checkpoint": str(checkpoint), **extra},
                      headers=bearer(key), timeout=60)  # a POST after a switch waits out its grace period


def _status(server: HttpServer) -> dict:
    r = httpx.get(server.url + "/v1/admin/reindex", headers=bearer(ADMIN_KEY), timeout=PROMPT_S)
    assert r.status_code == 200, r.text
    return r.json()


def _settled(server: HttpServer, state: str) -> dict:
    return wait_until(lambda: (s := _status(server))["state"] == state and s, 60, f"the reindex {state}")


def _left_behind(data: Path) -> list[str]:
    """What a reindex leaves in the data dir besides the generations: its state file and pending labels."""
    return sorted(p.name for p in data.iterdir() if p.name.startswith("reindex"))


def _generations(data: Path) -> set[str]:
    return {p.name for p in data.iterdir() if p.name.startswith("index") and p.is_dir()}


def _upload(server: HttpServer, videos: list[Path]) -> list[int]:
    with server.client() as c:
        c.headers.update(bearer(USER_KEY))
        jobs, ids = [], []
        for v in videos:
            with open(v, "rb") as f:
                r = c.post("/v1/videos", files={"file": (v.name, f, "video/mp4")})
            assert r.status_code == 202, r.text
            jobs.append(r.json()["job_id"])
            ids.append(r.json()["video_id"])
        assert all(j["status"] == "done" for j in wait_jobs(c, jobs, procs=(server,)).values())
    return ids


# G7 ------------------------------------------------------------------------------------------------------
def test_g7_a_failed_reindex_leaves_nothing_and_says_why_without_paths(assets, tmp_path):
    """After a switch to `new`, two checkpoints whose weights do not load, each tried twice: every attempt
    answers 202, then GET says `failed`, with its own generation (not the previous reindex's) and a reason
    that names no server path; the data dir holds exactly the generations it held before (no empty
    `index.<sha12>` per path tried), no state file and no pending labels; a restart resumes nothing."""
    data = tmp_path / "data"
    server = Serve(assets["old"], data, tmp_path / "serve.log", **admin_env(assets))
    server.start()
    try:
        r = _post(server, assets["new"])
        assert r.status_code == 202, r.text
        switched = _settled(server, "switched")
        before = {switched["generation"]}
        wait_until(lambda: _generations(data) == before, 60, "the previous generation dropped after its grace")
        for checkpoint in ("garbage1", "garbage2", "garbage1", "garbage2"):
            r = _post(server, assets[checkpoint])
            assert r.status_code == 202, r.text
            tried = r.json()["generation"]
            assert tried != switched["generation"], r.text
            status = _settled(server, "failed")
            assert status["generation"] == tried, status
            assert "model.safetensors" in status["error"], status
            assert "/" not in status["error"] and str(tmp_path) not in status["error"], status
            assert _generations(data) == before, (checkpoint, _generations(data), before)
            assert _left_behind(data) == [], _left_behind(data)
    finally:
        server.stop()
    log_before = len(server.tail(10_000_000))
    restarted = Serve(assets["new"], data, tmp_path / "serve.log", **admin_env(assets))  # `new` is current
    restarted.start(timeout_s=60)
    try:
        assert "resuming the online reindex" not in restarted.tail(10_000_000)[log_before:]
        assert _status(restarted)["state"] == "idle"
        assert _generations(data) == before
    finally:
        restarted.stop()


def test_g7_a_reindex_whose_videos_fail_drops_its_partial_generation(assets, tmp_path):
    """Two indexed videos, one of whose files is gone: the other is re-embedded into the new generation,
    then the reindex fails; that generation (holding a video) is dropped with its labels, the reason names
    the video but no server path, and searches still answer from the current generation."""
    data = tmp_path / "data"
    server = Serve(assets["old"], data, tmp_path / "serve.log", **admin_env(assets))
    server.start()
    try:
        ids = _upload(server, distinct_videos(tmp_path / "videos", 2, seconds=4, size=64))
        before = _generations(data)
        gone = sorted((data / "videos").rglob("*.mp4"))[0]
        gone.unlink()
        r = _post(server, assets["new"])
        assert r.status_code == 202, r.text
        status = _settled(server, "failed")
        assert status["failed"] == 1 and "could not be re-embedded" in status["error"], status
        assert str(data) not in status["error"] and "/" not in status["error"], status
        assert _generations(data) == before and _left_behind(data) == [], (_generations(data), _left_behind(data))
        r = httpx.post(server.url + "/v1/search", json={"video_id": ids[1], "k": 2}, headers=bearer(USER_KEY),
                       timeout=PROMPT_S)
        assert r.status_code == 200 and r.json()["hits"], r.text
    finally:
        server.stop()


# G8 ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def indexed_data(assets, tmp_path_factory) -> Path:
    """A data dir with two indexed videos, made by a real server that was then stopped."""
    root = tmp_path_factory.mktemp("indexed")
    server = Serve(assets["old"], root / "data", root / "serve.log")
    server.start()
    try:
        with server.client() as c:
            jobs = []
            for v in distinct_videos(root / "videos", 2, seconds=4, size=64):
                with open(v, "rb") as f:
                    jobs.append(c.post("/v1/videos", files={"file": (v.name, f, "video/mp4")}).json()["job_id"])
            assert all(j["status"] == "done" for j in wait_jobs(c, jobs, procs=(server,)).values())
    finally:
        server.stop()
    return root / "data"


def _serve_once(checkpoint: Path, data: Path, log: Path, timeout_s: float = 120, **env: str) -> tuple[int | None, str]:
    """`drca serve` on `data`: (its exit code, its stderr); (None, stderr) when it became ready instead
    (it is then stopped)."""
    port = free_port()
    cmd = [sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--checkpoint", str(checkpoint), "--data-dir", str(data), "--device", "cpu"]
    run_env = {**os.environ, "PYTHONPATH": str(ROOT), "DRCA_TORCH_THREADS": "1", "DRCA_TEXT_SEARCH": "false",
               "DRCA_QUERY_VIEWS": "[]", **env}
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=run_env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout_s
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                        return None, log.read_text(errors="replace")
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            assert proc.poll() is not None, f"drca serve neither started nor stopped in {timeout_s} s"
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
    return proc.returncode, log.read_text(errors="replace")


def _write(rel: str, text: str):
    return lambda d: (d / rel).write_text(text)


DAMAGE = {
    "pointer escapes": (_write("index.current", "../../etc"), "index.current names no index generation"),
    "pointer empty": (_write("index.current", ""), "index.current names no index generation"),
    "pointer to a missing generation": (_write("index.current", "index.nonexistent"),
                                        "index.nonexistent at"),
    "index removed": (lambda d: shutil.rmtree(d / "index"), "holds 2 indexed videos"),
    "metadata not JSON": (_write("index/metadata.json", "{not json"), "metadata.json cannot be read"),
    "metadata a list": (_write("index/metadata.json", "[]"), "metadata.json is not the index metadata"),
    "metadata embed_dim abc": (lambda d: (d / "index/metadata.json").write_text(json.dumps(
        {**json.loads((d / "index/metadata.json").read_text()), "embed_dim": "abc"})), "embed_dim ('abc')"),
    "state not JSON": (_write("reindex-online.json", "{"), "reindex-online.json cannot be read"),
    "state a list": (_write("reindex-online.json", "[1]"), "reindex-online.json is not an online reindex's state"),
    "labels row": (_write("reindex-index.labels.jsonl", '{"video_id": "abc", "labels": []}\n'),
                   "reindex-index.labels.jsonl line 1 is not a row"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_g8_a_damaged_data_dir_stops_the_start_with_one_line(assets, indexed_data, tmp_path, damage):
    """A copy of a data dir with two indexed videos, damaged one way: `drca serve` exits 2, its stderr
    holds no traceback and ends with one `error:` line naming the file; a current generation that is gone
    (a pointer to a missing one, or the index directory removed) is refused, never served empty."""
    data = tmp_path / "data"
    shutil.copytree(indexed_data, data)
    apply, named = DAMAGE[damage]
    apply(data)
    rc, stderr = _serve_once(assets["old"], data, tmp_path / "serve.err")
    assert rc == 2, (rc, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr[-3000:]
    assert named in errors[0], errors


def test_g8_the_missing_generation_is_recovered_as_the_message_says(assets, indexed_data, tmp_path):
    """The refusal of a missing current generation says to re-embed with `drca reindex --checkpoint`;
    doing so puts both videos back, and the server then starts with them."""
    data = tmp_path / "data"
    shutil.copytree(indexed_data, data)
    (data / "index.current").write_text("index.nonexistent")
    rc, stderr = _serve_once(assets["old"], data, tmp_path / "serve.err")
    assert rc == 2 and f"drca reindex --checkpoint {assets['old']}" in stderr, stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DRCA_TORCH_THREADS": "1", "DRCA_CHECKPOINT": str(assets["old"])}
    done = subprocess.run([sys.executable, "-m", "cli.main", "reindex", "--checkpoint", str(assets["old"]),
                           "--data-dir", str(data), "--device", "cpu"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "2 videos" in done.stdout, (done.stdout, done.stderr[-3000:])
    server = Serve(assets["old"], data, tmp_path / "serve.log")
    server.start()
    try:
        assert httpx.get(server.url + "/readyz").json()["videos"] == 2
    finally:
        server.stop()


# G10 -----------------------------------------------------------------------------------------------------
def _bytes_read(pid: int) -> int:
    """Bytes the process has read with read(2) and the like (`rchar`: files, sockets, pipes)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no rchar in /proc/{pid}/io")


def test_g10_a_checkpoint_already_hashed_is_not_read_again_and_the_409_names_nothing(assets, tmp_path):
    """The server runs the checkpoint `cur` from the allowed directory: 20 POSTs naming it each answer 409
    (the index is already made by it) without naming its path or sha, and the server reads less than 3
    times the weights file in all (it read all of it for each POST when it hashed each time). The file
    then rewritten in place with other weights of the same size (same inode): the next POST sees another
    checkpoint and starts a reindex to it (202)."""
    cur = tiny_checkpoint(assets["allowed"] / "cur", NEW_CLASSES, seed=2)
    weights = cur / "model.safetensors"
    twin = tiny_checkpoint(tmp_path / "twin", NEW_CLASSES, seed=3)
    size, sha = weights.stat().st_size, hashlib.sha256(weights.read_bytes()).hexdigest()
    other = (twin / "model.safetensors").read_bytes()
    assert len(other) == size and hashlib.sha256(other).hexdigest() != sha
    server = Serve(cur, tmp_path / "data", tmp_path / "serve.log", **admin_env(assets),
                   DRCA_ADMIN_RATE_LIMIT_PER_S="0")
    server.start()
    try:
        first = _post(server, cur)
        assert first.status_code == 409, first.text
        read_before = _bytes_read(server.proc.pid)
        for _ in range(20):
            r = _post(server, cur)
            assert r.status_code == 409, r.text
            message = r.json()["error"]["message"]
            assert message == "the index is already made by this checkpoint", message
            assert str(cur) not in r.text and sha[:12] not in r.text and "/" not in message, r.text
        read = _bytes_read(server.proc.pid) - read_before
        assert read < 3 * size, f"{read} bytes read for 20 POSTs of a {size}-byte checkpoint"
        inode = weights.stat().st_ino
        with open(weights, "r+b") as f:  # in place: the same inode and size, another content
            f.write(other)
        assert weights.stat().st_ino == inode and weights.stat().st_size == size
        r = _post(server, cur)
        assert r.status_code == 202, r.text
        assert _settled(server, "switched")["generation"].endswith(hashlib.sha256(other).hexdigest()[:12])
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(assets, tmp_path_factory) -> HttpServer:
    """API keys, two admin keys, the allowed directory and the default admin rate limit (5 in a row, then
    one every 5 s, per admin key)."""
    data = tmp_path_factory.mktemp("admin-dd-data")
    server = Serve(assets["old"], data, data.parent / f"{data.name}.log", **admin_env(assets))
    server.start()
    yield server
    server.stop()


def test_g10_admin_posts_are_rate_limited_per_admin_key(server, assets):
    """Five POSTs in a row pass (here a 422 each: no checkpoint there), the sixth is 429 `rate_limited`
    (JSON, with Retry-After); GET still answers, and another admin key has its own bucket."""
    missing = assets["allowed"] / "missing"
    answers = [_post(server, missing, RATE_KEY) for _ in range(6)]
    assert [r.status_code for r in answers] == [422] * 5 + [429], [r.text for r in answers]
    limited = answers[-1]
    assert limited.json()["error"]["code"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
    r = httpx.get(server.url + "/v1/admin/reindex", headers=bearer(RATE_KEY), timeout=PROMPT_S)
    assert r.status_code == 200, r.text
    assert _post(server, missing).status_code == 422


# G11 -----------------------------------------------------------------------------------------------------
def test_g11_an_unknown_field_is_422_and_starts_nothing(server, assets):
    r = _post(server, assets["new"], force=True)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_input" and "force" in err["message"], err
    assert _status(server)["state"] == "idle"


def test_g11_a_body_that_is_not_json_is_told_what_the_route_takes(server, assets):
    """The admin route takes JSON only: a multipart body is 415 and told to send application/json (not
    "or multipart/form-data"); the search route, which takes both, names both."""
    r = httpx.post(server.url + "/v1/admin/reindex", files={"checkpoint": (None, str(assets["new"]))},
                   headers=bearer(ADMIN_KEY), timeout=PROMPT_S)
    assert r.status_code == 415, r.text
    err = r.json()["error"]
    assert err["code"] == "unsupported_media_type", err
    assert err["message"].startswith("send application/json ("), err  # the content type it got in brackets
    assert _status(server)["state"] == "idle"
    r = httpx.post(server.url + "/v1/search", content=b"text=hi", timeout=PROMPT_S,
                   headers={**bearer(USER_KEY), "content-type": "text/plain"})
    assert r.status_code == 415, r.text
    assert "send application/json or multipart/form-data" in r.json()["error"]["message"], r.text


def test_g11_thumbnails_are_bounded_in_height_too(server, tmp_path):
    """A 32x8192 video's thumbnail fits in 320x320 (it was served at 32x8192); a 64x48 one is not
    enlarged."""
    from PIL import Image

    tall = tmp_path / "tall.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=32x8192:rate=10", "-t", "2", *H264, str(tall))
    small = lavfi_video(tmp_path / "small.mp4", "testsrc2=size=64x48:rate=10", "-t", "2")
    sizes = {}
    with server.client() as c:
        c.headers.update(bearer(USER_KEY))
        for path in (tall, small):
            with open(path, "rb") as f:
                r = c.post("/v1/videos", files={"file": (path.name, f, "video/mp4")})
            assert r.status_code in (200, 202), r.text
            r = c.get(f"/v1/videos/{r.json()['video_id']}/thumbnail", params={"t": 1})
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", r.text[:300]
            sizes[path.name] = Image.open(io.BytesIO(r.content)).size
    assert max(sizes["tall.mp4"]) <= 320 and sizes["tall.mp4"][1] == 320, sizes
    assert sizes["small.mp4"] == (64, 48), sizes


def test_g11_a_second_process_on_a_milvus_lite_file_stops_with_one_line(assets, tmp_path):
    data = tmp_path / "data"
    first = Serve(assets["old"], data, tmp_path / "first.log", DRCA_INDEX="milvus")
    first.start()
    try:
        rc, stderr = _serve_once(assets["old"], data, tmp_path / "second.err", DRCA_INDEX="milvus")
    finally:
        first.stop()
    assert rc == 2, (rc, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "open in another process" in lines[0], lines
