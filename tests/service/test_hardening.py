"""Regression tests for the hardening items of issue 13 (a hostile client's probes of the API)."""

from __future__ import annotations

import re


def _error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"]
    return body["error"]


# 1. /metrics: every label has a bounded set of values ------------------------------------------------
def test_metrics_labels_are_bounded(client):
    before = client.get("/metrics").text
    for i in range(30):
        client.request(f"XMETHOD{i:02d}" + "Q" * 200, "/v1/videos")
        client.get(f"/v1/no-such-route-{i}")
        client.get(f"/static/no-such-file-{i}.js")
    text = client.get("/metrics").text
    assert "XMETHOD" not in text and "no-such" not in text
    assert 'method="other",route="/v1/videos"' in text
    routes = set(re.findall(r'route="([^"]*)"', text))
    assert "unmatched" in routes
    assert all(r in ("unmatched", "/static", "/metrics", "/", "/healthz", "/readyz") or r.startswith("/v1/")
               for r in routes), routes
    # 90 distinct garbage requests added a handful of series, not 90 x 16
    assert len(text) - len(before) < 12_000
