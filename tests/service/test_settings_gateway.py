"""Settings sources, and a gateway without a worker (the issue-6 gateway role): 503, never a hang."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from model import SHIPPED_CHECKPOINT
from service.http.app import create_app
from service.settings import Settings
from tests.service.conftest import make_settings


def test_settings_defaults_env_and_file(tmp_path, monkeypatch):
    s = Settings()
    assert s.checkpoint == SHIPPED_CHECKPOINT and SHIPPED_CHECKPOINT.parts[-3:] == ("model", "checkpoints", "drca-lite0")
    assert s.data_dir.as_posix() == "data" and s.api_keys == [] and s.redis_url is None
    env_file = tmp_path / "drca.env"
    env_file.write_text("DRCA_PORT=9001\nDRCA_MAX_K=7\n")
    monkeypatch.setenv("DRCA_MAX_K", "9")  # the environment beats the file
    monkeypatch.setenv("DRCA_API_KEYS", '["k1"]')
    s = Settings(_env_file=env_file)
    assert (s.port, s.max_k, [k.get_secret_value() for k in s.api_keys]) == (9001, 9, ["k1"])
    with pytest.raises(ValidationError):
        Settings(device="tpu")
    with pytest.raises(ValidationError):
        Settings(api_keys=[""])


def test_milvus_scale_out_needs_a_milvus_server():
    """With Redis (several processes), Milvus must be a server every process reaches, not a Lite file."""
    redis = "redis://127.0.0.1:6379/0"
    with pytest.raises(ValidationError, match="needs milvus_uri"):
        Settings(index="milvus", redis_url=redis)
    with pytest.raises(ValidationError, match="held by one process"):
        Settings(index="milvus", redis_url=redis, milvus_uri="./data/milvus.db")
    s = Settings(index="milvus", redis_url=redis, milvus_uri="http://milvus:19530")
    assert s.milvus_location == "http://milvus:19530"
    assert Settings(index="milvus").milvus_location.endswith("milvus.db")  # embedded: a Lite file is fine


def test_gateway_without_worker_answers_503(checkpoint, tmp_path, media):
    settings = make_settings(checkpoint, tmp_path, inference_timeout_s=2)
    with TestClient(create_app(settings, with_worker=False)) as c:
        assert c.get("/readyz").json()["worker_running"] is False
        with open(media["bars"], "rb") as f:
            up = c.post("/v1/videos", files={"file": ("a.mp4", f)})
        assert up.status_code == 202 and up.json()["status"] == "queued"  # accepted, waits for a worker
        t0 = time.monotonic()
        r = c.post("/v1/search", json={"text": "a cat", "k": 3})
        assert r.status_code == 503 and r.json()["error"]["code"] == "worker_unavailable"
        with open(media["bars"], "rb") as f:
            assert c.post("/v1/classify", files={"file": ("a.mp4", f)}).status_code == 503
        assert time.monotonic() - t0 < 10
        assert 'drca_queue_depth 1.0' in c.get("/metrics").text


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_hostile_checkpoint_is_a_one_line_exit_2(command, checkpoint, tmp_path):
    """`drca serve` / `drca worker` with a checkpoint whose config asks for 10^9 layers: exit 2 and one
    line naming the problem, before anything is built."""
    import json
    import shutil

    from typer.testing import CliRunner

    from cli.main import app

    bad = tmp_path / "ckpt"
    shutil.copytree(checkpoint, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["backbone"]["depth"] = 10**9
    (bad / "config.json").write_text(json.dumps(cfg))
    r = CliRunner().invoke(app, [command, "--checkpoint", str(bad), "--redis", "redis://127.0.0.1:1/0"]
                           if command == "worker" else [command, "--checkpoint", str(bad)])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "backbone.depth=1000000000 is outside" in lines[0], r.output
