"""Real processes on loopback for the scale-out tests and benchmarks/scale.py: a `redis-server` (AOF,
its own directory, a free port; never the system service), `drca serve --redis` gateway replicas and
`drca worker --redis` workers, each logging to its own file."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_exe() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)


#: The `drca` processes spawned whose logs may still grow (tests/internal_errors.py reads and prunes it).
SPAWNED: list[Proc] = []


class Proc:
    #: A `drca` process: the test suite reads its log for internal errors (tests/internal_errors.py).
    drca = False

    def wait_ready(self, timeout_s: float = 120) -> None:
        """Gateways: /readyz is 200; workers: their heartbeat is in Redis."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args, self.log, self.env = args, log, env or {}
        self.proc: subprocess.Popen | None = None
        self.log_start = 0  # where its log was when SPAWNED took it in

    def spawn(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        with open(self.log, "ab") as log:  # the child keeps its own copy of the descriptor
            if self.drca and self not in SPAWNED:  # watched from here on (a restart does not move it)
                self.log_start = log.tell()
                SPAWNED.append(self)
            self.proc = subprocess.Popen(self.args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.args[:4]} exited with {self.proc.returncode}:\n{self.tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> None:
        if self.running:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class RedisServer(Proc):
    """redis-server with AOF (`appendfsync always`: an acknowledged write survives kill -9 of Redis)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        exe = redis_server_exe()
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server; .ci/run does)")
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        super().__init__([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory),
                          "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                          "--protected-mode", "no", "--daemonize", "no"], directory / "redis.log")

    def start(self, timeout_s: float = 20) -> None:
        self.spawn()
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if client.ping():
                    return
            except redis.exceptions.BusyLoadingError:
                pass
            except redis.ConnectionError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"redis-server not up in {timeout_s} s:\n{self.tail()}")

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


class MilvusLiteServer(Proc):
    """`milvus-lite server` on a free loopback port, its data in `directory` (kept across restarts)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        super().__init__([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(directory / "data"),
                          "--host", "127.0.0.1", "--port", str(self.port)], directory / "milvus.log")

    def start(self, timeout_s: float = 60) -> None:
        self.spawn()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if "listening" in self.tail():
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", self.port)) == 0:
                        return
            time.sleep(0.05)
        raise AssertionError(f"milvus-lite server not up in {timeout_s} s:\n{self.tail()}")


def _env(checkpoint: Path, data_dir: Path, redis_url: str, **extra: str) -> dict[str, str]:
    return {"DRCA_REDIS_URL": redis_url, "DRCA_CHECKPOINT": str(checkpoint), "DRCA_DATA_DIR": str(data_dir),
            "DRCA_DEVICE": "cpu", "DRCA_TORCH_THREADS": "1", "DRCA_MAX_WAIT_MS": "5", **extra}


class HttpServer(Proc):
    """A `drca serve` process on a free loopback port; ready when /readyz answers 200."""

    drca = True

    def __init__(self, extra_args: list[str], log: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__([sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1",
                          "--port", str(self.port), *extra_args], log, env)

    def start(self, timeout_s: float = 120) -> None:
        self.spawn()
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready in {timeout_s} s:\n{self.tail()}")

    def client(self, timeout_s: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout_s)


class Gateway(HttpServer):
    """`drca serve --redis`: one gateway replica with its own index directory."""

    def __init__(self, checkpoint: Path, data_dir: Path, redis_url: str, index_dir: Path, log: Path,
                 **settings: str) -> None:
        super().__init__([], log, _env(checkpoint, data_dir, redis_url, DRCA_REPLICA_INDEX_DIR=str(index_dir),
                                       **settings))


class Worker(Proc):
    """`drca worker --redis`; ready once its heartbeat is in Redis."""

    drca = True

    def __init__(self, checkpoint: Path, data_dir: Path, redis_url: str, log: Path, **settings: str) -> None:
        self.redis_url = redis_url
        super().__init__([sys.executable, "-m", "cli.main", "worker"], log,
                         _env(checkpoint, data_dir, redis_url, **settings))

    @property
    def name(self) -> str:
        return f"{socket.gethostname()}-{self.proc.pid}"

    def start(self, timeout_s: float = 120) -> None:
        self.spawn()
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = 120) -> None:
        client = redis.Redis.from_url(self.redis_url)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if client.zscore(f"{self.env.get('DRCA_REDIS_PREFIX', 'drca')}:workers", self.name) is not None:
                return
            time.sleep(0.1)
        raise AssertionError(f"worker not registered in {timeout_s} s:\n{self.tail()}")


def start_all(*procs: Proc, timeout_s: float = 180) -> None:
    """Spawn together (they load in parallel), then wait for each to be ready."""
    for p in procs:
        p.spawn()
    for p in procs:
        p.wait_ready(timeout_s)


def wait_jobs(c: httpx.Client, job_ids: list[int], timeout_s: float = 120,
              procs: tuple[Proc, ...] = ()) -> dict[int, dict]:
    """Poll until every job is done or failed; their last state."""
    left = set(job_ids)
    out: dict[int, dict] = {}
    deadline = time.monotonic() + timeout_s
    while left and time.monotonic() < deadline:
        for p in procs:
            p.check_alive()
        for jid in sorted(left):
            r = c.get(f"/v1/jobs/{jid}")
            if r.status_code == 200 and r.json()["status"] in ("done", "failed"):
                out[jid] = r.json()
                left.discard(jid)
        if left:
            time.sleep(0.1)
    if left:
        states = {j: c.get(f"/v1/jobs/{j}").json() for j in sorted(left)[:5]}
        raise AssertionError(f"{len(left)} jobs unfinished after {timeout_s} s, e.g. {states}")
    return out
