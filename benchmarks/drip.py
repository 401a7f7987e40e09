"""Slow "drip" connections against a real `drca serve`: is the server still ready for everyone else, and
does it give back every file descriptor afterwards?

    python -m benchmarks.drip [--connections 1000] [--hold-seconds 120] [--drip-interval 3]
                              [--kinds headers,body] [--checkpoint DIR] [--out PATH]

The script starts its own `drca serve` (the embedded service, default settings; the shipped checkpoint
unless --checkpoint), because it reads the server's /proc/<pid>/fd. It raises its own RLIMIT_NOFILE soft
limit to what `--connections` needs; the server inherits that limit (its `Max open files` is recorded).

Then it keeps `--connections` connections open for `--hold-seconds` (opened over `--ramp-seconds`), each
of one kind, round-robin over `--kinds`:
- `headers`: a request line and part of the headers, then one more header byte every `--drip-interval`
  seconds (the server's `header_timeout_s` should cut it off);
- `body`: complete headers of a multipart upload, then one body byte every `--drip-interval` seconds (the
  minimum body rate, the body deadline, or the cap on uploads in flight should end it);
- `idle`: a connection that sends nothing.
A connection that the server answers or closes is reopened after `--drip-interval` seconds, so the
pressure stays at `--connections` for the whole hold. Meanwhile, once a second, a fresh connection asks
`GET /readyz` (latency, failures; the target: every answer within 1 s), and the server's descriptor count
and RSS are sampled. Then every drip is closed and the script waits (up to `--settle-seconds`) until the
server's descriptor count is back to its baseline (measured after a warm-up request, before the drips).

Writes benchmarks/results/drip.json: the settings above, the /readyz latencies, the descriptor counts
(baseline, peak, after, seconds to release), what the drips saw (opened, closed by the server, the status
lines the server answered), a per-second timeline, and whether each target was met.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import os
import resource
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks._env import write_result
from model import SHIPPED_CHECKPOINT
from tests.procs import HttpServer

log = logging.getLogger("benchmarks.drip")
KINDS = ("headers", "body", "idle")
READYZ_TARGET_S = 1.0
BOUNDARY = "drip-boundary"


def raise_nofile(needed: int) -> tuple[int, int]:
    """The soft RLIMIT_NOFILE raised to at least `needed` (up to the hard limit); the limits after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} is below the {needed} descriptors needed; "
                             "raise it (ulimit -Hn) or use fewer --connections")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def max_open_files(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return " ".join(line.split()[3:5])
    return "unknown"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


@dataclass
class DripStats:
    open: int = 0
    opened: collections.Counter = field(default_factory=collections.Counter)
    closed_by_server: collections.Counter = field(default_factory=collections.Counter)
    statuses: collections.Counter = field(default_factory=collections.Counter)  # "kind status"
    connect_errors: collections.Counter = field(default_factory=collections.Counter)
    bytes_sent: int = 0


def _opening(kind: str, host: str) -> tuple[bytes, bytes]:
    """(what a connection of `kind` sends at once, the bytes it then drips one at a time)."""
    if kind == "headers":
        return (f"POST /v1/videos HTTP/1.1\r\nHost: {host}\r\n".encode(),
                b"X-Drip: " + b"a" * 100_000)
    if kind == "body":
        part = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"drip.mp4\"\r\n"
                "Content-Type: video/mp4\r\n\r\n").encode()
        head = (f"POST /v1/videos HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000000\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n").encode()
        return head + part, b"\0" * 900_000
    return b"", b""


async def drip(kind: str, host: str, port: int, interval_s: float, start_after_s: float,
               stop: asyncio.Event, stats: DripStats) -> None:
    """One drip connection of `kind`, reopened whenever the server ends it, until `stop`."""
    await asyncio.sleep(start_after_s)
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as e:
            stats.connect_errors[type(e).__name__] += 1
            await _pause(stop, interval_s)
            continue
        stats.opened[kind] += 1
        stats.open += 1
        try:
            first, rest = _opening(kind, host)
            if first:
                writer.write(first)
                await writer.drain()
            sent = 0
            while not stop.is_set():
                try:
                    data = await asyncio.wait_for(reader.read(4096), timeout=interval_s)
                except TimeoutError:
                    if kind != "idle" and sent < len(rest):
                        writer.write(rest[sent:sent + 1])
                        await writer.drain()
                        sent += 1
                        stats.bytes_sent += 1
                    continue
                stats.closed_by_server[kind] += 1
                if data.startswith(b"HTTP/1.1 "):
                    stats.statuses[f"{kind} {data[9:12].decode('latin-1')}"] += 1
                break
        except (ConnectionError, OSError):
            stats.closed_by_server[kind] += 1
        finally:
            stats.open -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        await _pause(stop, interval_s)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


class ReadyProbe(threading.Thread):
    """Once a second, `GET /readyz` on a fresh connection: its latency (None: no 200 answer in time)."""

    def __init__(self, url: str, give_up_s: float) -> None:
        super().__init__(name="readyz-probe", daemon=True)
        self.url, self.give_up_s = url, give_up_s
        self.latencies: list[float | None] = []
        self.errors: collections.Counter = collections.Counter()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            t0 = time.perf_counter()
            try:
                r = httpx.get(self.url + "/readyz", timeout=self.give_up_s)
                ok = r.status_code == 200
                if not ok:
                    self.errors[f"status {r.status_code}"] += 1
            except httpx.HTTPError as e:
                ok = False
                self.errors[type(e).__name__] += 1
            dt = time.perf_counter() - t0
            self.latencies.append(dt if ok else None)
            self.stopped.wait(max(0.0, 1.0 - dt))


async def hold(args: argparse.Namespace, server: HttpServer, probe: ReadyProbe) -> tuple[DripStats, list[dict]]:
    """`args.connections` drips for `args.hold_seconds`, sampled once a second; then all closed."""
    pid = server.proc.pid
    stats, stop = DripStats(), asyncio.Event()
    kinds = [k.strip() for k in args.kinds.split(",")]
    tasks = [asyncio.create_task(drip(kinds[i % len(kinds)], "127.0.0.1", server.port, args.drip_interval,
                                      args.ramp_seconds * i / args.connections, stop, stats))
             for i in range(args.connections)]
    timeline = []
    t0 = time.monotonic()
    while (elapsed := time.monotonic() - t0) < args.ramp_seconds + args.hold_seconds:
        server.check_alive()
        last = probe.latencies[-1] if probe.latencies else None
        timeline.append({"t_s": round(elapsed, 1), "open": stats.open, "server_fds": fd_count(pid),
                         "server_rss_mb": round(rss_mb(pid), 1), "readyz_s": None if last is None else round(last, 4)})
        await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*tasks)
    return stats, timeline


def measure(args: argparse.Namespace, checkpoint: Path, work: Path) -> dict:
    server = HttpServer(["--checkpoint", str(checkpoint), "--data-dir", str(work / "data")], work / "serve.log", {})
    server.start(timeout_s=300)
    pid = server.proc.pid
    try:
        for route in ("/readyz", "/v1/videos", "/metrics"):  # warm-up: what a first request opens
            httpx.get(server.url + route, timeout=30).raise_for_status()
        time.sleep(1.0)
        baseline = fd_count(pid)
        limit = max_open_files(pid)
        log.info("server pid %d: %d descriptors at baseline, max open files %s", pid, baseline, limit)
        probe = ReadyProbe(server.url, give_up_s=args.probe_give_up)
        probe.start()
        stats, timeline = asyncio.run(hold(args, server, probe))
        closed_at = time.monotonic()
        fds_after = fd_count(pid)
        while fds_after > baseline and time.monotonic() - closed_at < args.settle_seconds:
            time.sleep(0.2)
            fds_after = fd_count(pid)
        released_s = time.monotonic() - closed_at
        probe.stopped.set()
        probe.join(args.probe_give_up + 5)
        server.check_alive()
        tracebacks = server.tail(10**8).count("Traceback")
    finally:
        server.stop()
    answered = [x for x in probe.latencies if x is not None]
    during = [t for t in timeline if t["t_s"] >= args.ramp_seconds]
    readyz = {"probes": len(probe.latencies), "answered": len(answered), "failed": len(probe.latencies) - len(answered),
              "errors": dict(probe.errors), "p50_s": percentile(answered, 0.5), "p99_s": percentile(answered, 0.99),
              "max_s": max(answered) if answered else None,
              "over_target": sum(x > READYZ_TARGET_S for x in answered),
              "mean_s": statistics.fmean(answered) if answered else None}
    fds = {"baseline": baseline, "peak_during": max(t["server_fds"] for t in timeline), "after": fds_after,
           "seconds_to_release": round(released_s, 2), "released": fds_after <= baseline}
    drips = {"opened": dict(stats.opened), "closed_by_server": dict(stats.closed_by_server),
             "server_answers": dict(stats.statuses), "connect_errors": dict(stats.connect_errors),
             "bytes_dripped": stats.bytes_sent,
             "open_min_during_hold": min((t["open"] for t in during), default=None),
             "open_max": max(t["open"] for t in timeline)}
    return {
        "server_max_open_files": limit,
        "readyz": readyz, "fds": fds, "drips": drips, "timeline": timeline,
        "server_log_tracebacks": tracebacks,
        "met": {"readyz_within_1s": readyz["failed"] == 0 and readyz["over_target"] == 0,
                "fds_released": fds["released"]},
    }


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--hold-seconds", type=float, default=120.0, help="how long the drips are held, after the ramp")
    ap.add_argument("--ramp-seconds", type=float, default=10.0, help="the drips are opened over this many seconds")
    ap.add_argument("--drip-interval", type=float, default=3.0, help="seconds between two dripped bytes")
    ap.add_argument("--kinds", default="headers,body", help=f"comma-separated, round-robin: {', '.join(KINDS)}")
    ap.add_argument("--settle-seconds", type=float, default=60.0, help="longest wait for the descriptors after")
    ap.add_argument("--probe-give-up", type=float, default=10.0, help="a /readyz probe's own timeout")
    ap.add_argument("--checkpoint", type=Path, help="default: the shipped checkpoint")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",")]
    if not kinds or any(k not in KINDS for k in kinds):
        ap.error(f"--kinds: among {', '.join(KINDS)}")
    if args.connections < 1:
        ap.error("--connections: at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per probe otherwise
    checkpoint = args.checkpoint or SHIPPED_CHECKPOINT
    soft, hard = raise_nofile(args.connections + 512)  # the drips, the probes, the interpreter's own
    with tempfile.TemporaryDirectory(prefix="drca-bench-drip-") as tmp:
        results = measure(args, checkpoint, Path(tmp))
    results = {
        "checkpoint": str(checkpoint), "weights": "given" if args.checkpoint else "shipped",
        "connections": args.connections, "kinds": kinds, "drip_interval_s": args.drip_interval,
        "ramp_s": args.ramp_seconds, "hold_s": args.hold_seconds, "client_nofile": [soft, hard],
        "targets": {"readyz_max_s": READYZ_TARGET_S, "fds_back_to_baseline": True},
        **results,
    }
    path = write_result("drip", results, args.out)
    log.info("readyz %s; fds %s; wrote %s", results["readyz"], results["fds"], path)
    return path


if __name__ == "__main__":
    main()
