"""API keys (401 JSON, constant-time compare, never logged) and the Prometheus metrics."""

from __future__ import annotations

import logging
import re

import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app
from tests.service.conftest import ingest, make_settings

KEY = "s3cret-key-value"


@pytest.fixture(scope="module")
def keyed(checkpoint, tmp_path_factory):
    settings = make_settings(checkpoint, tmp_path_factory.mktemp("keyed"), api_keys=["other-key", KEY],
                             text_search=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_api_keys(keyed, caplog):
    caplog.set_level(logging.DEBUG)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": "Bearer "}):
        r = keyed.get("/v1/videos", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
    assert keyed.get("/v1/videos", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert keyed.get("/v1/videos", headers={"Authorization": "bearer other-key"}).status_code == 200
    assert keyed.get("/healthz").status_code == 200  # operations endpoints stay open
    assert keyed.get("/").status_code == 200  # the web app's page itself is open; its API calls are not
    for media_path in ("/v1/videos/1/thumbnail?t=1", "/v1/videos/1/content"):
        assert keyed.get(media_path).status_code == 401
        assert keyed.get(media_path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 404
    assert KEY not in caplog.text


def test_settings_hide_keys(checkpoint, tmp_path):
    s = make_settings(checkpoint, tmp_path, api_keys=[KEY])
    assert KEY not in repr(s) and KEY not in s.model_dump_json()


def test_metrics(keyed, media):
    auth = {"Authorization": f"Bearer {KEY}"}
    with open(media["bars"], "rb") as f:
        r = keyed.post("/v1/videos", files={"file": ("a.mp4", f)}, headers=auth)
    assert r.status_code == 202
    keyed.headers.update(auth)
    try:
        from tests.service.conftest import wait_job

        assert wait_job(keyed, r.json()["job_id"])["status"] == "done"
        ingest(keyed, media["testsrc"])
    finally:
        keyed.headers.pop("Authorization")
    text = keyed.get("/metrics").text
    assert 'drca_request_seconds_count{method="GET",route="/v1/jobs/{job_id}",status="200"}' in text
    assert 'drca_videos{status="indexed"} 2.0' in text
    assert "drca_queue_depth 0.0" in text
    assert "drca_index_videos 2.0" in text and "drca_index_segments 2.0" in text
    assert "drca_encoder_batch_clips_count" in text and 'drca_jobs_finished_total{status="done"} 2.0' in text


def test_every_v1_route_refuses_a_missing_or_wrong_key(keyed):
    """Every /v1 operation in the OpenAPI schema (so a new route cannot be added without the check) answers
    401 JSON before doing anything, for no key and for a wrong one; the admin routes, off on a server
    without admin keys, 403 `admin_disabled` (tests/service/test_hardening5.py)."""
    paths = keyed.get("/openapi.json").json()["paths"]
    ops = [(method.upper(), re.sub(r"\{[^}]+\}", "1", path))
           for path, item in paths.items() if path.startswith("/v1/")
           for method in item if method in ("get", "post", "put", "patch", "delete")]
    assert len(ops) >= 9 and ("DELETE", "/v1/videos/1") in ops and ("POST", "/v1/search") in ops, ops
    for headers in ({}, {"Authorization": "Bearer wrong-key"}):
        for method, url in ops:
            r = keyed.request(method, url, headers=headers, json={"text": "x"})
            if url.startswith("/v1/admin/"):
                assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled", (url, r.text)
                continue
            assert r.status_code == 401, (method, url, headers, r.status_code, r.text)
            assert r.json()["error"]["code"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
    assert keyed.get("/v1/videos/999999", headers={"Authorization": f"Bearer {KEY}"}).status_code == 404  # key ok
