"""The profile of the ingest and query paths (issue 26): the stage times the worker and the gateway record
for real videos (job timings, `drca_stage_seconds`, `drca_encoder_clips`), and the thread split the
embedded service gives the encoder and the decoders."""

from __future__ import annotations

import os
import threading

import decord
import pytest
import torch
from fastapi.testclient import TestClient

from media.segments import DecodeTimes, plan_segments, plan_views
from media.video import open_video
from model.config import InputConfig
from service.http.app import create_app
from service.metrics import profile_delta, read_info, read_profile
from service.roles.embedded import ThreadSplit, thread_split
from tests.service.conftest import ingest, make_settings, upload, wait_job

DECODE_STAGES = ("open", "decode", "preprocess", "views", "forward")


def test_decode_times_split_decoding_preprocessing_and_views(media):
    """The frames' decoding, the original view's preprocessing and the extra views are timed apart: the
    view plan's clips decode nothing, and a plan of the original view alone spends nothing on views."""
    inp = InputConfig(num_frames=4, img_size=32)
    with open_video(media["two_segments"]) as reader:
        segs = plan_segments(reader, inp.num_frames)
        times = DecodeTimes()
        plan, head = plan_views(reader, segs, inp, views=("original", "mirrored"), times=times)
        assert times.decode > 0 and times.preprocess == 0 and times.views == 0  # nothing to find: no borders
        decoded = times.decode
        clips = plan.clips(head[0], times)
        assert len(clips) == 2 and times.decode == decoded  # preprocessing decodes nothing
        assert times.preprocess > 0 and times.views > 0
        only = DecodeTimes()
        plan_original, _ = plan_views(reader, segs, inp, remove_borders=True, times=only)
        assert only.views > 0  # finding the borders is the views' work
        before = only.views
        plan_original.clips(head[0], only)
        assert only.views == before and only.preprocess > 0


@pytest.fixture(scope="module")
def profiled(checkpoint, tmp_path_factory):
    """An embedded service that embeds the active picture without looking for borders (so an ingest spends
    nothing on views) and embeds video queries in the mirrored view too."""
    settings = make_settings(checkpoint, tmp_path_factory.mktemp("profile"), text_search=False,
                             remove_borders=False, query_views=["mirrored"])
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_an_ingest_job_records_every_stage_and_the_metrics_add_them_up(profiled, media):
    before = read_profile(profiled.get("/metrics").text)
    r = upload(profiled, media["two_segments"])
    assert r.status_code == 202, r.text
    job = wait_job(profiled, r.json()["job_id"])
    assert job["status"] == "done", job
    video = profiled.get(f"/v1/videos/{job['video_id']}").json()
    t = job["timings"]
    for key in ("queue_wait_s", "open_s", "decode_s", "preprocess_s", "views_s", "forward_s", "text_s", "index_s",
                "commit_s", "total_s"):
        assert key in t and t[key] >= 0, (key, t)
    assert t["open_s"] > 0 and t["decode_s"] > 0 and t["preprocess_s"] > 0 and t["forward_s"] > 0 and t["index_s"] > 0
    assert t["views_s"] == 0  # no borders looked for, one view
    stages = sum(t[k] for k in ("open_s", "decode_s", "preprocess_s", "views_s", "forward_s", "text_s", "index_s", "commit_s"))
    assert stages <= t["total_s"] + 0.01, t  # disjoint stages inside the job's time
    prof = profile_delta(read_profile(profiled.get("/metrics").text), before)["ingest"]
    for stage in (*DECODE_STAGES, "text", "index", "commit"):
        assert prof["items"][stage] == 1, (stage, prof)
    for stage in (*DECODE_STAGES, "text", "index", "commit"):  # recorded before the job was marked done
        assert prof["seconds"][stage] == pytest.approx(t[f"{stage}_s"], abs=1e-4), stage
    assert prof["clips"] == {"original": len(video["segments"])} and len(video["segments"]) == 2


def test_a_video_query_records_its_stages_and_its_views_clips(profiled, media):
    ingest(profiled, media["bars"])
    before = read_profile(profiled.get("/metrics").text)
    with open(media["two_segments"], "rb") as f:
        r = profiled.post("/v1/search", files={"file": ("q.mp4", f, "video/mp4")}, data={"k": "3"})
    assert r.status_code == 200, r.text
    prof = profile_delta(read_profile(profiled.get("/metrics").text), before)["query"]
    for stage in (*DECODE_STAGES, "spool", "search"):
        assert prof["items"][stage] == 1 and prof["seconds"][stage] > 0, (stage, prof)
    assert prof["clips"] == {"original": 2, "mirrored": 2}  # 2 segments in 2 views


def test_the_thread_split_for_two_cores(tmp_path):
    s = make_settings(tmp_path, tmp_path).model_copy(update={"torch_threads": 0, "decode_threads": 2})
    assert thread_split(s, cores=2) == ThreadSplit(cores=2, encoder=1, openvino=2, decoders=2, per_decoder=1,
                                                   interop=1)
    assert (thread_split(s, cores=16).encoder, thread_split(s, cores=16).openvino) == (15, 16)
    limited = thread_split(s.model_copy(update={"torch_threads": 3}), cores=2)  # a limit holds on either runtime
    assert (limited.encoder, limited.openvino) == (3, 3)
    assert thread_split(s.model_copy(update={"torch_threads": 3, "runtime_threads": 1}), cores=2).openvino == 1


def test_on_two_cores_openvino_gets_both_and_torch_and_each_decoder_one_thread(checkpoint, tmp_path, media,
                                                                               monkeypatch):
    """The embedded service on a 2-core affinity: OpenVINO compiled for 2 threads (at the worker's priority),
    torch's intra-op pool (its preprocessing, the torch runtime) at 1, and decord given 1 thread per video."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    given: list[int] = []
    real = decord.VideoReader

    def reader(*a, **kw):
        given.append(kw["num_threads"])
        return real(*a, **kw)

    monkeypatch.setattr(decord, "VideoReader", reader)
    old = torch.get_num_threads()
    settings = make_settings(checkpoint, tmp_path, text_search=False).model_copy(update={"torch_threads": 0})
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as c:
            encoder = c.app.state.service.active.current.encoder
            assert encoder.runner.name == "openvino" and encoder.runner.threads == 2
            # torch's count is per thread, read once by each thread at its first parallel op: a thread that
            # starts now (as the worker's decode and runner threads did) gets the split's
            seen: list[int] = []
            t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
            t.start()
            t.join()
            assert seen == [1]
            info = read_info(c.get("/metrics").text)
            assert info["encoder_threads"] == "2" and info["torch_threads"] == "1"
            assert info["runtime"] == "openvino" and info["decode_threads"] == "2"
            assert info["decoder_threads_per_video"] == "1" and info["batch_size"] == str(settings.batch_size)
            ingest(c, media["bars"])
    finally:
        torch.set_num_threads(old)
    assert given and set(given) == {1}, given
