"""No container engine runs here: check the compose files' structure and what the Dockerfiles refer to
(files that exist, ports and paths that match the settings, real `drca` commands)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from service.cli import app as cli
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


class ComposeLoader(yaml.SafeLoader):
    """YAML with compose's `!reset` tag (an override that clears a value)."""


ComposeLoader.add_constructor("!reset", lambda loader, node: {"!reset": loader.construct_sequence(node)})


def load(name: str) -> dict:
    return yaml.load((ROOT / name).read_text(), Loader=ComposeLoader)


def dockerfile(path: str) -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / path).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def env_of(instrs: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for op, rest in instrs:
        if op == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return env


def check_settings_names(env: dict[str, str]) -> None:
    fields = Settings.model_fields
    for name in env:
        if name.startswith("DRCA_"):
            assert name[5:].lower() in fields, f"{name} is not a setting"


COMPOSE = load("docker-compose.yml")
IMAGES = {"gateway": "docker/gateway.Dockerfile", "worker": "docker/worker.Dockerfile"}


@pytest.mark.parametrize("service", ["gateway", "worker"])
def test_dockerfiles_copy_existing_files_run_non_root_with_a_healthcheck(service):
    path = COMPOSE["services"][service]["build"]["dockerfile"]
    assert path == IMAGES[service] and (ROOT / path).is_file()
    instrs = dockerfile(path)
    ops = [op for op, _ in instrs]
    for op, rest in instrs:
        if op == "COPY":
            *sources, _dest = rest.split()
            for src in sources:
                assert (ROOT / src).exists(), f"{path}: COPY {src} does not exist"
    users = [rest for op, rest in instrs if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert "HEALTHCHECK" in ops
    cmd = yaml.safe_load([rest for op, rest in instrs if op == "CMD"][-1])
    assert cmd[0] == "drca" and cmd[1] in {c.name for c in cli.registered_commands}
    check_settings_names(env_of(instrs))
    assert env_of(instrs)["DRCA_DATA_DIR"] == "/data"


def test_worker_image_is_cuda_with_faiss_gpu():
    instrs = dockerfile(IMAGES["worker"])
    base = [rest for op, rest in instrs if op == "FROM"][0]
    assert base.startswith("nvidia/cuda:") and "runtime" in base
    assert any(op == "RUN" and ".[gpu]" in rest for op, rest in instrs)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^gpu = \["faiss-gpu', pyproject, re.M)
    health = [rest for op, rest in instrs if op == "HEALTHCHECK"][0]
    assert '"drca", "worker", "--check"' in health


def test_gateway_port_matches_settings_and_compose():
    instrs = dockerfile(IMAGES["gateway"])
    port = Settings.model_fields["port"].default
    env = env_of(instrs)
    assert int(env["DRCA_PORT"]) == port
    assert [rest for op, rest in instrs if op == "EXPOSE"] == [str(port)]
    health = [rest for op, rest in instrs if op == "HEALTHCHECK"][0]
    assert f"127.0.0.1:{port}/readyz" in health
    host, container = COMPOSE["services"]["gateway"]["ports"][0].split(":")
    assert int(container) == port


def test_compose_wires_redis_gateway_and_gpu_worker():
    services, volumes = COMPOSE["services"], COMPOSE["volumes"]
    assert {n for n, s in services.items() if not s.get("profiles")} == {"redis", "gateway", "worker"}
    redis = services["redis"]
    cmd = redis["command"]
    assert cmd[0] == "redis-server" and cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--appendfsync") + 1] == "always"
    redis_volume = redis["volumes"][0].split(":")
    assert redis_volume[1] == "/data" and redis_volume[0] in volumes  # the AOF lives on a named volume
    for name in ("gateway", "worker"):
        s = services[name]
        check_settings_names(s["environment"])
        assert s["environment"]["DRCA_REDIS_URL"] == "redis://redis:6379/0"
        assert s["depends_on"]["redis"]["condition"] == "service_healthy"
        mounts = {m.group(2): m.group(1) for m in (re.fullmatch(r"(.+):(/[^:]*)(:ro|:rw)?", v) for v in s["volumes"])}
        assert mounts["/data"] == "videos" and "videos" in volumes  # uploads shared with the workers
        assert s["environment"]["DRCA_CHECKPOINT"] in mounts
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]


def test_cpu_override_drops_the_gpu():
    over = load("docker-compose.cpu.yml")["services"]
    assert set(over) == {"worker"}
    w = over["worker"]
    assert (ROOT / w["build"]["dockerfile"]).is_file()
    assert w["environment"]["DRCA_DEVICE"] == "cpu"
    assert w["deploy"]["resources"]["reservations"]["devices"] == {"!reset": []}
    assert w["command"] == ["drca", "worker"]
    check_settings_names(w["environment"])


def test_milvus_profile_is_standalone_milvus_with_etcd_and_minio_and_a_service_on_it():
    services, volumes = COMPOSE["services"], COMPOSE["volumes"]
    profile = {n for n, s in services.items() if "milvus" in s.get("profiles", [])}
    assert profile == {"etcd", "minio", "milvus", "milvus-drca"}
    milvus = services["milvus"]
    assert milvus["command"] == ["milvus", "run", "standalone"] and milvus["image"].startswith("milvusdb/milvus:")
    assert milvus["environment"]["ETCD_ENDPOINTS"] == "etcd:2379"
    assert milvus["environment"]["MINIO_ADDRESS"] == "minio:9000"
    assert {d: c["condition"] for d, c in milvus["depends_on"].items()} == {"etcd": "service_healthy",
                                                                           "minio": "service_healthy"}
    assert "9091/healthz" in " ".join(milvus["healthcheck"]["test"])
    for name, path in (("etcd", "/etcd"), ("minio", "/minio_data"), ("milvus", "/var/lib/milvus")):
        source, target = services[name]["volumes"][0].split(":")
        assert target == path and source in volumes  # their state lives on named volumes
    drca = services["milvus-drca"]
    env = drca["environment"]
    check_settings_names(env)
    assert env["DRCA_INDEX"] == "milvus" and env["DRCA_MILVUS_URI"] == "http://milvus:19530"
    assert Settings(index=env["DRCA_INDEX"], milvus_uri=env["DRCA_MILVUS_URI"]).milvus_location == env["DRCA_MILVUS_URI"]
    assert "DRCA_REDIS_URL" not in env  # the embedded service on Milvus (scale-out on Milvus: docs/indexer.md)
    assert drca["depends_on"]["milvus"]["condition"] == "service_healthy"
    assert (ROOT / drca["build"]["dockerfile"]).is_file()
    assert drca["ports"] == ["8001:8000"]
