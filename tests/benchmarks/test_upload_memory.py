"""The upload-memory benchmark on a tiny run: small videos of the adversarial shapes, one server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import upload_memory
from tests.service.media import tiny_checkpoint


@pytest.mark.slow
def test_a_tiny_upload_memory_run_records_the_peak_growth_per_case(tmp_path: Path) -> None:
    out = tmp_path / "upload_memory.json"
    upload_memory.main(["--seconds", "2", "--max-size", "160x90", "--cases", "ordinary,max3,search-tall",
                        "--shared-server", "--checkpoint", str(tiny_checkpoint(tmp_path / "ckpt")), "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "upload_memory" and doc["environment"]["cpu_cores"]
    res = doc["results"]
    assert res["target_growth_mb"] == 300 and res["refused"] == [] and res["fresh_server_per_case"] is False
    cases = {c["key"]: c for c in res["cases"]}
    assert list(cases) == ["ordinary", "max3", "search-tall"]
    assert cases["max3"]["name"] == "upload 160x90 x3 at once" and cases["search-tall"]["size"] == "32x8192"
    # every upload was indexed (its job done) and the query answered before the peak was read
    assert [len(c["requests"]) for c in cases.values()] == [1, 3, 1]
    for key in ("ordinary", "max3"):
        assert all(r["status"] == 202 and r["job_status"] == "done" and r["timings"] for r in cases[key]["requests"])
    assert cases["search-tall"]["requests"][0]["status"] == 200
    assert len({r["file"] for r in cases["max3"]["requests"]}) == 3  # distinct videos, none deduplicated
    for c in cases.values():
        assert c["accepted"] and c["peak_rss_mb"] >= c["rss_before_mb"] > 0
        assert c["peak_growth_mb"] == pytest.approx(c["peak_rss_mb"] - c["rss_before_mb"], abs=0.2)
        assert c["within_target"] is (c["peak_growth_mb"] <= 300)
    assert cases["search-tall"]["peak_growth_mb"] > 1  # decoding 32x8192 frames is seen in the peak
    assert res["max_growth_mb_accepted"] == max(c["peak_growth_mb"] for c in cases.values())
    assert res["met"] is all(c["within_target"] for c in cases.values())
