"""The bad-input table: each case is a 4xx JSON error with a message, and the service keeps serving."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from service.errors import PayloadTooLarge
from service.storage import parse_upload, sanitize_filename
from tests.commits import wal_commits
from tests.service.conftest import upload, wait_job


def _error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"]
    return body["error"]


def _post_file(client, path: Path, url: str = "/v1/videos", name: str | None = None, **data):
    with open(path, "rb") as f:
        return client.post(url, files={"file": (name or path.name, f, "video/mp4")}, data=data)


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("empty", 400, "empty_file"),
        ("corrupt", 422, "undecodable_video"),
        ("text", 422, "undecodable_video"),
        ("audio", 422, "no_video_stream"),
        ("large", 413, "video_too_large"),  # 640x480 > max_pixels 320x240
        ("long", 422, "video_too_long"),  # 14 s > max_duration_s 10
    ],
)
def test_bad_uploads(client, media, case, status, code):
    before = len(list((client.app.state.settings.tmp_dir).iterdir()))
    err = _error(_post_file(client, media[case]), status)
    assert err["code"] == code, err
    # nothing stored, nothing left in the spool directory, and the service still answers
    assert len(list(client.app.state.settings.tmp_dir.iterdir())) == before
    assert client.get("/readyz").status_code == 200


def test_bad_file_for_classify_and_search(client, media):
    _error(_post_file(client, media["corrupt"], "/v1/classify"), 422)
    _error(_post_file(client, media["audio"], "/v1/search"), 422)


def test_oversize_upload_is_413(client, tmp_path):
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * 1_200_000)  # over max_upload_bytes (1 MB)
    assert _error(_post_file(client, big), 413)["code"] == "payload_too_large"


def test_oversize_is_refused_while_streaming(tmp_path):
    """parse_upload stops reading the body at the limit: later chunks are never requested."""
    boundary = "XyZ"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n"
            "Content-Type: video/mp4\r\n\r\n").encode()
    consumed = []

    async def body():
        yield head
        for i in range(1000):  # 1000 x 64 KiB = 64 MiB if fully read
            consumed.append(i)
            yield b"\1" * 65536

    async def run():
        await parse_upload(f"multipart/form-data; boundary={boundary}", body(), tmp_path, 256 * 1024)

    with pytest.raises(PayloadTooLarge):
        asyncio.run(run())
    assert len(consumed) <= 5
    assert list(tmp_path.iterdir()) == []  # the partial spool file is gone


def test_missing_file_field(client):
    r = client.post("/v1/videos", data={"external_id": "x"}, files={"video": ("a.mp4", b"abc")})
    assert _error(r, 422)["code"] == "invalid_input"
    _error(client.post("/v1/videos", data={"external_id": "x"}), 400)  # urlencoded, not multipart
    _error(client.post("/v1/videos", content=b"{}", headers={"content-type": "application/json"}), 400)


def test_k_out_of_range(client, media):
    _error(client.post("/v1/search", json={"text": "a dog", "k": 0}), 422)
    _error(client.post("/v1/search", json={"text": "a dog", "k": 51}), 422)  # max_k = 50
    _error(client.post("/v1/classify", json={"video_id": 1, "k": 10_000}), 422)
    _error(_post_file(client, media["bars"], "/v1/search", k="abc"), 422)


def test_unknown_ids(client):
    assert _error(client.get("/v1/videos/999999"), 404)["code"] == "not_found"
    _error(client.get("/v1/jobs/999999"), 404)
    _error(client.delete("/v1/videos/999999"), 404)
    _error(client.post("/v1/classify", json={"video_id": 999999}), 404)
    _error(client.post("/v1/search", json={"video_id": 999999}), 404)
    _error(client.get("/v1/videos/not-a-number"), 422)
    _error(client.get("/v1/nothing-here"), 404)


def test_malformed_json(client):
    bad = {"content-type": "application/json"}
    assert _error(client.post("/v1/search", content=b'{"text": "a', headers=bad), 400)["code"] == "bad_request"
    _error(client.post("/v1/search", content=b"[1, 2]", headers=bad), 422)
    _error(client.post("/v1/search", json={"text": "a", "video_id": 3}), 422)  # two queries
    _error(client.post("/v1/search", json={"txt": "typo"}), 422)  # unknown field
    _error(client.post("/v1/search", json={"text": "   "}), 422)
    _error(client.post("/v1/search", content=b"text=hi", headers={"content-type": "text/plain"}), 415)
    _error(client.post("/v1/videos", content=b"--x\r\ngarbage",
                       headers={"content-type": "multipart/form-data; boundary=x"}), 400)
    r = _post_file(client, Path(__file__).parent / "media.py", metadata="{not json")
    _error(r, 400)


@pytest.mark.parametrize("name", ["../../etc/passwd.mp4", "..\\..\\evil.mp4", "ｖｉｄéo\u202e4pm.mp4", "\x00\x01.mp4", "...."])
def test_bad_filenames_are_sanitised(client, media, tmp_path, name):
    # unique content per case so each upload creates a new video
    data = media["rgb"].read_bytes() + name.encode("utf-8", "replace")  # trailing junk after the moov: still decodes
    p = tmp_path / "v.mp4"
    p.write_bytes(data)
    r = _post_file(client, p, name=name)
    assert r.status_code in (200, 202), r.text
    video = client.get(f"/v1/videos/{r.json()['video_id']}").json()
    src = video["source_name"]
    assert src is None or ("/" not in src and "\\" not in src and not src.startswith(".") and src.isprintable())
    stored = list(client.app.state.settings.videos_dir.rglob(f"{video['sha256']}.*"))
    assert len(stored) == 1 and stored[0].parent.parent == client.app.state.settings.videos_dir


def test_sanitize_filename():
    assert sanitize_filename("../../a b.mp4") == "a b.mp4"
    assert sanitize_filename("C:\\x\\y.MOV") == "y.MOV"
    assert sanitize_filename("\u202eevil") == "evil"
    assert sanitize_filename("") is None and sanitize_filename("...") is None


def test_failed_ingest_marks_job_failed_and_indexes_nothing(client, media):
    """A file that passes the upload probe and fails in the worker: 202, then the job ends `failed` with the
    reason, the video shows `failed`, and nothing of it reaches the index (no commit in its log)."""
    r = _post_file(client, media["bad_frames"])
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"])
    assert job["status"] == "failed", job
    assert "decod" in job["error"] and str(client.app.state.settings.data_dir) not in job["error"], job
    video = client.get(f"/v1/videos/{r.json()['video_id']}").json()
    assert video["status"] == "failed" and video["error"] == job["error"] and video["segments"] == []
    assert client.app.state.service.active.current.index.get(r.json()["video_id"]) is None
    assert r.json()["video_id"] not in wal_commits(client.app.state.settings.index_dir)


def test_service_keeps_serving_after_bad_input(client, media):
    r = upload(client, media["mandel"])
    assert r.status_code in (200, 202)
    assert client.get("/readyz").json()["ready"]
