"""Through the whole ASGI stack: the body limits (streamed, not only the Content-Length pre-check), the
external_id rules, conflicts, re-uploads of failed content, and deletes racing each other and a finishing
job."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from service.http.deps import MAX_JSON_BYTES
from service.http.routes.videos import _EXTERNAL_ID
from service.storage import MAX_FIELD_BYTES
from tests.commits import wal_commits
from tests.service.conftest import LIMITS, ingest, upload, wait_job
from tests.service.media import distinct_videos
from tests.waiting import wait_until


def _error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert err["message"] and (code is None or err["code"] == code), err
    return err


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return distinct_videos(tmp_path_factory.mktemp("limit-videos"), 6, seconds=3, size=64)


def _spool_files(client) -> list[Path]:
    return list(client.app.state.settings.tmp_dir.glob("upload-*.part"))


def test_oversize_upload_without_content_length_is_refused_mid_stream(client):
    """A chunked body (no Content-Length, so no pre-check) is cut off at the limit while streaming."""
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n"
            "Content-Type: video/mp4\r\n\r\n").encode()
    sent = []

    def body():
        yield head
        for i in range(64):  # 64 x 64 KiB = 4 MiB, 4x max_upload_bytes
            sent.append(i)
            yield b"\1" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post("/v1/videos", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    err = _error(r, 413, "payload_too_large")
    assert str(LIMITS["max_upload_bytes"]) in err["message"]
    assert _spool_files(client) == []  # the partial spool file is gone


def test_form_field_limit(client, videos):
    meta_ok = json.dumps({"title": "x" * (MAX_FIELD_BYTES - 20)})
    meta_ok += " " * (MAX_FIELD_BYTES - len(meta_ok))  # exactly the limit
    assert len(meta_ok.encode()) == MAX_FIELD_BYTES
    assert upload(client, videos[0], metadata=meta_ok).status_code == 202
    err = _error(upload(client, videos[1], metadata=meta_ok + " "), 413, "payload_too_large")
    assert "metadata" in err["message"]
    assert _spool_files(client) == []


def test_json_body_limit(client):
    def body(n: int) -> bytes:
        doc = json.dumps({"text": "a dog", "k": 3}).encode()
        return doc[:-1] + b" " * (n - len(doc)) + b"}"

    ok = client.post("/v1/search", content=body(MAX_JSON_BYTES), headers={"content-type": "application/json"})
    assert ok.status_code == 200, ok.text
    for n in (MAX_JSON_BYTES + 1, 4 * MAX_JSON_BYTES):
        r = client.post("/v1/search", content=body(n), headers={"content-type": "application/json"})
        _error(r, 413, "payload_too_large")
    chunked = client.post("/v1/search", content=iter([body(2 * MAX_JSON_BYTES)]),  # no Content-Length
                          headers={"content-type": "application/json"})
    _error(chunked, 413, "payload_too_large")


def test_external_id_length_and_reuse(client, videos):
    longest = "e" * _EXTERNAL_ID
    first = upload(client, videos[2], external_id=longest)
    assert first.status_code == 202, first.text
    assert client.get(f"/v1/videos/{first.json()['video_id']}").json()["external_id"] == longest
    _error(upload(client, videos[3], external_id=longest + "e"), 422, "invalid_input")
    # the same external_id on other content: 409, and nothing of the second upload is kept
    before = {p.name for p in client.app.state.settings.videos_dir.rglob("*.mp4")}
    err = _error(upload(client, videos[3], external_id=longest), 409, "conflict")
    assert str(first.json()["video_id"]) in err["message"]
    assert {p.name for p in client.app.state.settings.videos_dir.rglob("*.mp4")} == before
    assert _spool_files(client) == []
    # the same content with its own external_id is the existing video (200), not a conflict
    again = upload(client, videos[2], external_id=longest)
    assert again.status_code == 200 and again.json()["video_id"] == first.json()["video_id"]


def test_failed_content_can_be_uploaded_again(client, media):
    """A failed video's content uploaded again gets a new job on the same video (the file is re-tried)."""
    r = upload(client, media["bad_frames"], external_id="bad-frames")
    assert r.status_code in (200, 202), r.text
    first = wait_job(client, r.json()["job_id"])
    assert first["status"] == "failed"
    again = upload(client, media["bad_frames"], external_id="bad-frames")
    assert again.status_code == 202 and again.json()["created"] is True, again.text
    assert again.json()["video_id"] == r.json()["video_id"] and again.json()["job_id"] > r.json()["job_id"]
    assert wait_job(client, again.json()["job_id"])["status"] == "failed"
    jobs = [client.get(f"/v1/jobs/{j}").json()["status"] for j in (r.json()["job_id"], again.json()["job_id"])]
    assert jobs == ["failed", "failed"]


def test_double_delete(client, videos):
    vid = ingest(client, videos[4])
    assert client.delete(f"/v1/videos/{vid}").status_code == 204
    _error(client.delete(f"/v1/videos/{vid}"), 404, "not_found")
    _error(client.get(f"/v1/videos/{vid}"), 404, "not_found")


def test_concurrent_deletes_one_wins(client, videos, tmp_path):
    vid = ingest(client, videos[5])
    barrier = threading.Barrier(4)
    codes: list[int] = []

    def delete() -> None:
        barrier.wait()
        codes.append(client.delete(f"/v1/videos/{vid}").status_code)

    threads = [threading.Thread(target=delete) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(codes) == [204, 404, 404, 404]
    assert client.app.state.service.active.current.index.get(vid) is None


def _unique(path: Path, tmp: Path, tag: str) -> Path:
    """The same video with different bytes (trailing junk after the moov still decodes): a new upload."""
    out = tmp / f"{tag}.mp4"
    out.write_bytes(path.read_bytes() + tag.encode())
    return out


@pytest.mark.parametrize("when", ["before_the_commit", "during_the_commit"])
def test_delete_racing_a_finishing_job_leaves_nothing(client, media, monkeypatch, tmp_path, when):
    """A DELETE lands while the worker finishes the video's job. `before_the_commit`: the delete wins the
    catalog lock, and the job drops its result (no index commit). `during_the_commit`: the job holds the lock
    (its index add is running), the delete waits for it and then removes what it added. Either way the
    video, its job and its vectors are gone, and the job's end changes nothing."""
    rt = client.app.state.service
    done = threading.Event()
    vid_box: dict[str, int] = {}
    deleter: list[threading.Thread] = []

    def delete_now() -> None:
        rt.catalog.delete(vid_box["vid"])

    if when == "before_the_commit":
        complete = rt.catalog.complete

        def complete_after_delete(job, *args, **kwargs):
            delete_now()  # the DELETE gets the lock first
            complete(job, *args, **kwargs)
            done.set()

        monkeypatch.setattr(rt.catalog, "complete", complete_after_delete)
    else:
        add = rt.active.current.index.add_video
        complete = rt.catalog.complete

        def add_then_race(video_id, segments, vectors):
            add(video_id, segments, vectors)  # inside complete(), under the catalog lock
            t = threading.Thread(target=delete_now)
            deleter.append(t)
            t.start()  # blocks on the catalog lock until complete() returns

        def complete_then_signal(job, *args, **kwargs):
            complete(job, *args, **kwargs)
            done.set()

        monkeypatch.setattr(rt.active.current.index, "add_video", add_then_race)
        monkeypatch.setattr(rt.catalog, "complete", complete_then_signal)

    path = _unique(media["life"], tmp_path, f"race-{when}")
    r = upload(client, path)
    assert r.status_code == 202, r.text
    vid_box["vid"] = vid = r.json()["video_id"]
    assert done.wait(60)
    for t in deleter:
        t.join(30)
    monkeypatch.undo()
    wait_until(lambda: client.get(f"/v1/videos/{vid}").status_code == 404, 10, "the video deleted")
    _error(client.get(f"/v1/jobs/{r.json()['job_id']}"), 404, "not_found")
    assert rt.active.current.index.get(vid) is None
    commits = wal_commits(client.app.state.settings.index_dir).get(vid, [])
    assert len(commits) == (0 if when == "before_the_commit" else 1)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert not list(client.app.state.settings.videos_dir.rglob(f"{sha}.*"))  # the file went with it
