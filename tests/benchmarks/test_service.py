"""The service benchmark, on a tiny run: two runtimes against their own `drca serve`, the profile of the
ingest and of the video queries, the summary, and the long-video part (queries while an ingest runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import service as bench
from tests.service.media import tiny_checkpoint


@pytest.mark.slow
def test_a_tiny_run_with_both_runtimes_writes_the_profile_and_the_summary(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "service.json"
    bench.main(["--checkpoint", str(ckpt), "--videos", "2", "--seconds", "3", "--size", "96x96", "--requests", "3",
                "--rounds", "1", "--long-seconds", "24", "--long-period", "2", "--runtimes", "torch,openvino",
                "--out", str(out)])
    res = json.loads(out.read_text())["results"]
    assert list(res["runs"]) == ["torch", "openvino"]
    for name, run in res["runs"].items():
        enc = run["server_encoder"]
        assert enc["runtime"] == name and run["stage_encoder"]["runtime"] == name
        for key in ("precision", "encoder_threads", "torch_threads", "decode_threads", "batch_size",
                    "decoder_threads_per_video"):
            assert enc[key], key

        ingest = run["profile"]["ingest"]
        assert ingest["items"] == 2 and ingest["wall_s"] > 0
        assert set(ingest["stages_s"]) == {*bench.INGEST_STAGES, "rest"}
        for stage in ("open", "decode", "preprocess", "views", "forward", "index", "commit"):  # views: the borders
            assert ingest["stages_s"][stage] > 0, (stage, ingest)
        assert ingest["stages_s"]["rest"] > -0.05  # the stages are inside the jobs' time
        assert sum(ingest["share_of_item_time"].values()) == pytest.approx(1.0)
        parts = ingest["rest_parts"]
        assert parts["upload_http_s"] > 0 and parts["queue_wait_s"] >= 0
        assert parts["upload_http_s"] + parts["queue_wait_s"] + parts["other_s"] == pytest.approx(
            ingest["stages_s"]["rest"])
        assert ingest["encoder"]["clips"] == 2 and ingest["encoder"]["forward_s"] > 0  # one 4 s segment each
        assert ingest["encoder"]["forward_s_extra_views"] == 0  # an ingest embeds the original view only
        assert ingest == run["rounds"][0]["profile"]  # one round: the run's profile is the round's

        query = run["profile"]["query"]
        assert query["items"] == 3 and query["item_s"] == pytest.approx(run["search"]["video"][0]["latency_sum_s"])
        for stage in bench.QUERY_STAGES:
            assert query["stages_s"][stage] > 0, (stage, query)
        assert query["share_of_item_time"]["rest"] < 1
        views = query["encoder"]["clips_by_view"]
        assert views["original"] == views["mirrored"] == 3  # 3 queries of one segment, in both views
        assert 0 < query["encoder"]["forward_s_extra_views"] < query["encoder"]["forward_s"]

        during = run["long_video"]["queries_while_ingesting"]
        assert during["video"]["answered"] + sum(during["video"]["errors"].values()) >= 1

    summary = res["summary"]
    assert summary["runtimes"] == ["torch", "openvino"]
    assert set(summary["video_query_p50_ms"]) == {"torch", "openvino"}
    ratios = summary["ratios"]["openvino_vs_torch"]
    assert ratios["ingest"] == pytest.approx(summary["ingest_video_seconds_per_s"]["openvino"]
                                             / summary["ingest_video_seconds_per_s"]["torch"])
    assert ratios["video_query_p99_speedup"] > 0
    # the single-runtime fields are kept at the top level: the last runtime's
    assert res["median"] == res["runs"]["openvino"]["median"] and res["search"] == res["runs"]["openvino"]["search"]
    assert res["server_settings"]["batch_size"] and res["model"]["name"] == "tiny-service"
