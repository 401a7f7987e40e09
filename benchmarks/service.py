"""Service throughput and latency, driving a real `drca serve` on loopback.

    python -m benchmarks.service [--checkpoint DIR] [--videos 16] [--seconds 10] [--requests 64]
    python -m benchmarks.service --runtimes torch,openvino   # the old path and the new, in one invocation
    python -m benchmarks.service --server http://127.0.0.1:8000   # an already running server

Measured in one run:
- decode-only rate: the service's own decode path (probe, decord, 1 fps segment sampling, preprocess)
  over the benchmark videos with the server's `decode_threads` threads (videos/s);
- encoder-only rate: forward passes on preprocessed clips at the server's batch size, in the server's
  runtime with the embedded service's encoder threads (videos/s, using the videos' segment count);
- (each of `--rounds` rounds: the stage rates, then the ingest, then delete everything; the JSON keeps
  every round and the medians, since other jobs on a shared machine make single runs noisy; each stage
  rate is the best of 3 passes, so the stage rates are, if anything, optimistic for the comparison)
- ingest: upload every video (4 in flight), wait for every job; videos/s and seconds of video per second;
  pipeline efficiency = ingest rate / min(decode rate, encoder rate). When decoding and the model share
  the same CPU cores (no GPU), the best a pipeline can do is 1 / (1/decode + 1/encode), reported too;
- search: latency p50/p99 and QPS at concurrency 1 and 16, for video queries (an upload of a clip each
  time: decode + embed + index search) and text queries;
- long video (`--long-seconds`, default the issue's probe: 64x64, 10,000 s at 1 frame per 30 s, about
  290 KB, 1250 segments for an 8-frame model): the server's peak RSS during one ordinary benchmark-video
  job and then during one such long job (each alone; the peak is the kernel's VmHWM, reset before the job
  through /proc/<pid>/clear_refs, minus the RSS before it), then a second long video's ingest with text
  and video queries sent one after another (concurrency 1) until its job is done: their p50/p99 latency
  while it ingests, and how many failed. Needs the server this run starts (its pid); skipped with --server.
The profile (`profile`, and each round's `rounds[].profile`), from the server's own records: the stage
seconds of `drca_stage_seconds` at /metrics (read before and after) and, for the ingest, the jobs' timings
and the uploads' HTTP time. Per path (`ingest`: every round's ingest added up; `query`: the video queries at
concurrency 1): `stages_s` (open: probing the container (a query's; an upload is probed by the gateway,
within its HTTP time), opening the decoder, planning the segments; decode: the frames; preprocess: crop,
resize, normalise; views: borders, inner picture, the extra query views; forward: the encoder, each
item's share of its batches; text: the metadata's MiniLM embedding; index: the durable index add; commit:
the records; spool: the query's upload read; search: the index search), `rest` (the items' time minus
the stages: HTTP, spooling, queues, batching waits; `rest_parts` for the ingest), `share_of_wall` and
`share_of_item_time`, and `encoder` (clips and forward seconds, from which GFLOP/s follow). `server_encoder`: what the server ran
(`drca_encoder_info`: runtime, precision, encoder and torch threads, decord threads per video, decode
threads, batch size).

`--runtime torch|openvino` starts the server with DRCA_RUNTIME; `--runtimes torch,openvino` runs the whole
measurement once per runtime, each against a fresh server and data dir: each run under `runs.<runtime>`,
the last one's fields also at the top level (as a single run writes them), and `summary` (ingest s of
video per second and video-query p50/p99 per runtime, and each against the first: ingest ratio and query
speedups).
Without --checkpoint, the shipped checkpoint is used if present, else a randomly initialised drca-cpu-112
with a 10-class head and a text head (speed does not depend on the weights; the JSON says which).
Timings from the stage measurements and the server compete for the same cores only when they overlap,
so the stage rates are taken while the server is idle. Writes benchmarks/results/service.json.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

from benchmarks._env import write_result
from media.video import ffmpeg_exe
from model import SHIPPED_CHECKPOINT
from service.metrics import profile_delta, read_info, read_profile
from service.settings import Settings

log = logging.getLogger("benchmarks.service")
ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["testsrc2", "mandelbrot", "smptebars", "life", "rgbtestsrc", "cellauto", "gradients", "testsrc"]


def random_checkpoint(path: Path) -> Path:
    from model.checkpoint import ModelCard, save_checkpoint
    from model.config import apply_overrides
    from model.drca import DRCA
    from model.presets import get_preset
    from model.text import MINILM_DIM, TextHead

    torch.manual_seed(0)
    cfg = apply_overrides(get_preset("drca-cpu-112"), ["head.num_classes=10"])
    card = ModelCard(preset="drca-cpu-112", class_names=[f"class {i}" for i in range(10)],
                     training_data="none: random init for the service benchmark")
    return save_checkpoint(path, DRCA(cfg).eval(), card, TextHead(MINILM_DIM, cfg.head.embed_dim).eval())


def make_video(root: Path, i: int, seconds: float, size: str) -> Path:
    """Benchmark video number `i` (its own source, seed and hue: distinct content)."""
    root.mkdir(parents=True, exist_ok=True)
    src = SOURCES[i % len(SOURCES)]
    opts = f"size={size}:rate=25" + ("" if src in ("mandelbrot", "life", "cellauto", "gradients")
                                      else f":duration={seconds}")
    if src in ("life", "gradients"):
        opts += f":seed={i}"
    p = root / f"v{i:03d}_{src}.mp4"
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-nostdin", "-f", "lavfi", "-i", f"{src}={opts}",
                    "-t", str(seconds), "-vf", f"hue=h={i * 37 % 360}", "-c:v", "libx264", "-preset", "veryfast",
                    "-pix_fmt", "yuv420p", str(p)], check=True)
    return p


def make_videos(root: Path, n: int, seconds: float, size: str) -> list[Path]:
    return [make_video(root, i, seconds, size) for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, data_dir: Path, runtime: str | None = None) -> tuple[subprocess.Popen, str]:
    """`drca serve` on a free loopback port (`runtime`: its DRCA_RUNTIME; None: the setting's)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), **({"DRCA_RUNTIME": runtime} if runtime else {})}
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port), "--checkpoint",
                             str(checkpoint), "--data-dir", str(data_dir)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"drca serve exited with {proc.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("drca serve did not become ready")


def make_long_video(path: Path, seconds: float, period_s: float, hue: int) -> Path:
    """A 64x64 video with one frame every `period_s` seconds: tiny on disk, many segments."""
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-nostdin", "-f", "lavfi", "-i",
                    f"testsrc2=size=64x64:rate=1/{period_s:g}:duration={seconds:g}", "-vf", f"hue=h={hue}",
                    "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


async def _job(c: httpx.AsyncClient, job_id: int) -> dict:
    """Poll a job; a poll on a keep-alive connection that the server closed at that moment is retried."""
    for attempt in range(3):
        try:
            return (await c.get(f"/v1/jobs/{job_id}")).json()
        except httpx.TransportError:
            if attempt == 2:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("unreachable")


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _percentile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


async def _upload_and_wait(c: httpx.AsyncClient, path: Path, on_running=None) -> dict:
    with open(path, "rb") as f:
        r = await c.post("/v1/videos", files={"file": (path.name, f.read())})
    r.raise_for_status()
    job_id = r.json()["job_id"]
    while True:
        job = await _job(c, job_id)
        if job["status"] == "done":
            if on_running is not None:  # done before a poll saw it running (a short job on a loaded machine)
                await on_running(None)
            return job
        if job["status"] == "failed":
            raise RuntimeError(f"{path}: {job['error']}")
        if job["status"] == "running" and on_running is not None:
            await on_running(job_id)
            on_running = None
        await asyncio.sleep(0.2)


async def job_peak_rss(url: str, pid: int, path: Path) -> dict:
    """One job alone: the server's RSS before it and its peak during it (VmHWM after a reset)."""
    before = _status_kb(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM (the peak RSS) to the current RSS
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        job = await _upload_and_wait(c, path)
    peak = _status_kb(pid, "VmHWM")
    video = httpx.get(f"{url}/v1/videos/{job['video_id']}", timeout=60).json()
    return {"file_bytes": path.stat().st_size, "duration_s": video["duration"], "segments": len(video["segments"]),
            "job_total_s": job["timings"]["total_s"], "decode_s": job["timings"].get("decode_s"),
            "rss_before_mb": before / 1024, "peak_rss_mb": peak / 1024, "peak_growth_mb": (peak - before) / 1024}


async def queries_while_ingesting(url: str, path: Path, queries: list[Path], texts: list[str]) -> dict:
    """Text and video queries, one at a time, from the moment the long video's job runs until it is done
    (at least one of each kind, so a job that ends early still gives both; `started_while_running` is false
    when the job was done before a poll saw it running). A query that fails (503 after `inference_timeout_s`, say) is counted in `errors`, not timed."""
    lat: dict[str, list[float]] = {"text": [], "video": []}
    errors: dict[str, dict[str, int]] = {"text": {}, "video": {}}
    started_while_running = False
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        done = asyncio.Event()

        async def query_loop(job_id: int | None) -> None:
            nonlocal started_while_running
            started_while_running = job_id is not None

            async def run() -> None:
                i = 0
                while i < 2 or not done.is_set():
                    t0 = time.perf_counter()
                    if i % 2 == 0:
                        r = await c.post("/v1/search", json={"text": texts[i // 2 % len(texts)], "k": 10})
                    else:
                        q = queries[i // 2 % len(queries)]
                        r = await c.post("/v1/search", files={"file": ("q.mp4", q.read_bytes())}, data={"k": "10"})
                    kind = "text" if i % 2 == 0 else "video"
                    if r.status_code == 200:
                        lat[kind].append(time.perf_counter() - t0)
                    else:
                        errors[kind][str(r.status_code)] = errors[kind].get(str(r.status_code), 0) + 1
                    i += 1

            tasks.append(asyncio.create_task(run()))

        tasks: list[asyncio.Task] = []
        job = await _upload_and_wait(c, path, on_running=query_loop)
        done.set()
        await asyncio.gather(*tasks)
    # false: the job was done before a poll saw it running, so its queries came after it (tiny runs only)
    out: dict = {"job_total_s": job["timings"]["total_s"], "started_while_running": started_while_running}
    for kind, values in lat.items():
        out[kind] = {"answered": len(values), "errors": errors[kind]}
        if values:
            out[kind].update(p50_ms=1000 * statistics.median(values), p99_ms=1000 * _percentile(values, 0.99),
                             max_ms=1000 * max(values))
    return out


def server_settings() -> dict:
    """The settings the servers ran with that decide the figures (`batch_size` unset: each runtime's)."""
    s = Settings()
    out = s.model_dump(include={"torch_threads", "decode_threads", "batch_size", "max_wait_ms", "prefetch",
                                "decode_ahead_clips", "max_segments", "device", "runtime", "runtime_precision"})
    if out["batch_size"] is None:
        out["batch_size"] = {r: s.batch_size_for(r) for r in ("torch", "openvino")}
    return out


def stage_rates(enc, videos: list[Path], repeats: int = 3) -> dict:
    """Decode-only and encoder-only rates with the server's settings, in this process (best of `repeats`)."""
    settings = enc.settings
    decode_s = encode_s = float("inf")
    for _ in range(repeats):  # best of `repeats`: other load only ever slows a pass down
        t0 = time.perf_counter()
        with ThreadPoolExecutor(settings.decode_threads) as pool:
            decoded = list(pool.map(enc.decode, videos))
        decode_s = min(decode_s, time.perf_counter() - t0)
    clips = torch.cat([d.clips for d in decoded])
    batch = enc.batch_size  # the server's, for this runtime
    enc.forward(clips[:batch])  # warm-up
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(clips), batch):
            enc.forward(clips[i : i + batch])
        encode_s = min(encode_s, time.perf_counter() - t0)
    return {
        "decode_threads": settings.decode_threads,
        "batch_size": batch,
        "segments": len(clips),
        "video_seconds": sum(d.duration for d in decoded),
        "decode_videos_per_s": len(videos) / decode_s,
        "encode_videos_per_s": len(videos) / encode_s,
        "encode_clips_per_s": len(clips) / encode_s,
    }


def ingest_round(url: str, enc, videos: list[Path]) -> dict:
    """Stage rates, then ingest everything over HTTP (its profile from the server's metrics and the jobs'
    timings), then delete it again (so the next round re-ingests)."""
    stages = stage_rates(enc, videos)
    before = read_profile(httpx.get(url + "/metrics").text)
    ing = asyncio.run(ingest(url, videos))
    measured = profile_delta(read_profile(httpx.get(url + "/metrics").text), before).get("ingest", {})
    rate = len(videos) / ing["seconds"]
    d, e = stages["decode_videos_per_s"], stages["encode_videos_per_s"]
    shared = 1 / (1 / d + 1 / e)  # both stages on the same cores, perfectly interleaved
    ids = [v["video_id"] for v in httpx.get(url + "/v1/videos", params={"limit": 1000}).json()["videos"]]
    for vid in ids:
        httpx.delete(f"{url}/v1/videos/{vid}").raise_for_status()
    return {
        **stages,
        "ingest_seconds": ing["seconds"],
        "ingest_videos_per_s": rate,
        "ingest_video_seconds_per_s": stages["video_seconds"] / ing["seconds"],
        "slower_stage": "decode" if d < e else "encode",
        "pipeline_efficiency": rate / min(d, e),
        "shared_cpu_bound_videos_per_s": shared,
        "efficiency_vs_shared_cpu_bound": rate / shared,
        "profile": ingest_profile(measured, ing),
    }


async def ingest(url: str, videos: list[Path], concurrency: int = 4) -> dict:
    """Upload every video (`concurrency` uploads in flight) and wait for every job: the seconds until the
    last is done, each upload's HTTP time (spooling, validation, registration) and each job's timings."""
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:

        async def one(p: Path) -> tuple[float, float, dict]:
            async with sem:
                t0 = time.perf_counter()
                with open(p, "rb") as f:
                    r = await c.post("/v1/videos", files={"file": (p.name, f)})
                r.raise_for_status()
                upload_s = time.perf_counter() - t0
                job_id = r.json()["job_id"]
            while True:  # the job's own clock gives the finish time, so polling can be slow (cheap)
                job = await _job(c, job_id)
                if job["status"] == "done":
                    return job["created_at"] + job["timings"]["total_s"], upload_s, job["timings"]
                if job["status"] == "failed":
                    raise RuntimeError(f"{p}: {job['error']}")
                await asyncio.sleep(0.5)

        t0 = time.time()
        done = await asyncio.gather(*(one(p) for p in videos))
        return {"seconds": max(end for end, _, _ in done) - t0, "upload_s": [u for _, u, _ in done],
                "jobs": [t for _, _, t in done]}


async def load(url: str, make_request, concurrency: int, total: int) -> dict:
    lat: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(total):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                t0 = time.perf_counter()
                r = await make_request(c, i)
                r.raise_for_status()
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat.sort()
    return {
        "concurrency": concurrency,
        "requests": total,
        "qps": total / wall,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))],
        "wall_s": wall,
        "latency_sum_s": sum(lat),
    }


INGEST_STAGES = ("open", "decode", "preprocess", "views", "forward", "text", "index", "commit")
QUERY_STAGES = ("spool", "open", "decode", "preprocess", "views", "forward", "search")


def _add(a: dict, b: dict) -> dict:
    """Two totals added key by key (nested dicts too)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _add(out.get(k, {}), v) if isinstance(v, dict) else out.get(k, 0) + v
    return out


def ingest_totals(measured: dict, ing: dict) -> dict:
    """One ingest's profile inputs: the server's stage seconds and clips (a `profile_delta` of its path), the
    wall time, and the jobs' time in the system (upload HTTP + upload acknowledged -> done)."""
    jobs = ing["jobs"]
    return {"seconds": measured.get("seconds", {}), "clips": measured.get("clips", {}), "wall_s": ing["seconds"],
            "items": len(jobs), "item_s": sum(ing["upload_s"]) + sum(j["total_s"] for j in jobs),
            "upload_http_s": sum(ing["upload_s"]), "queue_wait_s": sum(j.get("queue_wait_s", 0.0) for j in jobs)}


def path_profile(totals: dict, stages: tuple[str, ...]) -> dict:
    """Seconds per stage summed over the items (jobs or queries), `rest` = the items' time minus the stages
    (HTTP, spooling, queues, batching waits), and each as a share of the wall time and of the items' time.
    Pipelined ingest stages overlap (decode threads beside the model), so their wall shares can sum past 1;
    the item-time shares sum to 1. `encoder`: clips and forward seconds (GFLOP/s = clips x GFLOP per clip /
    forward_s); `forward_s_extra_views`: the forward seconds of the query views beyond the original (by
    their share of the clips)."""
    wall, item_s = totals["wall_s"], totals["item_s"]
    table = {st: totals["seconds"].get(st, 0.0) for st in stages}
    table["rest"] = item_s - sum(table.values())
    clips = totals["clips"]
    n = sum(clips.values())
    forward = table.get("forward", 0.0)
    out = {
        "wall_s": wall, "items": totals["items"], "item_s": item_s, "stages_s": table,
        "share_of_wall": {k: v / wall for k, v in table.items()} if wall else {},
        "share_of_item_time": {k: v / item_s for k, v in table.items()} if item_s else {},
        "encoder": {"clips": n, "clips_by_view": clips, "forward_s": forward,
                    "clips_per_forward_s": n / forward if forward else None,
                    "forward_s_extra_views": forward * (n - clips.get("original", 0)) / n if n else 0.0},
    }
    if "upload_http_s" in totals:
        up, queue = totals["upload_http_s"], totals["queue_wait_s"]
        out["rest_parts"] = {"upload_http_s": up, "queue_wait_s": queue, "other_s": table["rest"] - up - queue}
    return out


def ingest_profile(measured: dict, ing: dict) -> dict:
    return path_profile(ingest_totals(measured, ing), INGEST_STAGES)


def server_encoder(url: str) -> dict:
    """What the server runs its encoder with (`drca_encoder_info`: runtime, precision, threads, batch size)."""
    return read_info(httpx.get(url + "/metrics", timeout=60).text)


def stage_encoder(ckpt: Path, work: Path, runtime: str | None):
    """The in-process encoder of the stage rates: the server's runtime and thread split (the encoder's
    threads as the embedded service sets them), its compiled model cached in the work folder."""
    from service.encoding.encoder import VideoEncoder
    from service.roles.embedded import thread_split

    settings = Settings(checkpoint=ckpt, text_search=False, runtime_cache_dir=work / "runtime-cache",
                        **({"runtime": runtime} if runtime else {}))
    torch.set_num_threads(thread_split(settings).encoder)
    return VideoEncoder(settings)


def measure(args: argparse.Namespace, ckpt: Path, work: Path, videos: list[Path], queries: list[Path],
            runtime: str | None) -> dict:
    """The whole measurement against one server: the one at --server, or a fresh `drca serve` (with
    `runtime`, on its own data dir) that is stopped at the end."""
    proc = None
    try:
        url = args.server
        if url is None:
            proc, url = start_server(ckpt, work / f"data-{runtime or 'default'}", runtime)
        enc = stage_encoder(ckpt, work, runtime)
        encoder = server_encoder(url)
        log.info("server encoder: %s", encoder)
        rounds = []
        for r in range(args.rounds):
            rounds.append(ingest_round(url, enc, videos))
            log.info("round %d: %s", r, {k: round(v, 3) for k, v in rounds[-1].items() if isinstance(v, float)})
        # re-ingest once more so that the searches run against an index
        asyncio.run(ingest(url, videos))

        async def video_query(c: httpx.AsyncClient, i: int) -> httpx.Response:
            with open(queries[i % len(queries)], "rb") as f:
                return await c.post("/v1/search", files={"file": ("q.mp4", f.read())}, data={"k": "10"})

        async def text_query(c: httpx.AsyncClient, i: int) -> httpx.Response:
            return await c.post("/v1/search", json={"text": TEXTS[i % len(TEXTS)], "k": 10})

        search: dict[str, list[dict]] = {}
        query_profile = None
        for name, fn in (("video", video_query), ("text", text_query)):
            asyncio.run(load(url, fn, 1, 2))  # warm-up
            search[name] = []
            for conc in (1, 16):
                before = read_profile(httpx.get(url + "/metrics").text)
                search[name].append(asyncio.run(load(url, fn, conc, args.requests)))
                if name == "video" and conc == 1:  # the profile of video queries one at a time
                    measured = profile_delta(read_profile(httpx.get(url + "/metrics").text), before).get("query", {})
                    one = search[name][-1]
                    query_profile = path_profile(
                        {"seconds": measured.get("seconds", {}), "clips": measured.get("clips", {}),
                         "wall_s": one["wall_s"], "items": one["requests"], "item_s": one["latency_sum_s"]},
                        QUERY_STAGES)
            log.info("%s search: %s", name, search[name])
        long_video = None
        if args.long_seconds > 0 and proc is not None:
            long_video = measure_long_video(args, work, url, proc.pid, queries)
        ingest_all = [ingest_totals_of(r) for r in rounds]
        total = ingest_all[0]
        for t in ingest_all[1:]:
            total = _add(total, t)
        return {
            "model": {"name": enc.config.name, "img_size": enc.config.input.img_size,
                      "num_frames": enc.config.input.num_frames},
            "runtime": encoder.get("runtime", runtime),
            "server_encoder": encoder,
            "stage_encoder": enc.describe(),
            "rounds": rounds,
            "median": {k: statistics.median(r[k] for r in rounds) for k in (
                "decode_videos_per_s", "encode_videos_per_s", "ingest_videos_per_s", "ingest_video_seconds_per_s",
                "pipeline_efficiency", "efficiency_vs_shared_cpu_bound")},
            "search": search,
            "profile": {"ingest": path_profile(total, INGEST_STAGES), "query": query_profile},
            "long_video": long_video,
        }
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def ingest_totals_of(round_: dict) -> dict:
    """A round's profile inputs back from its profile (to add the rounds up)."""
    p = round_["profile"]
    stages = {k: v for k, v in p["stages_s"].items() if k != "rest"}
    return {"seconds": stages, "clips": p["encoder"]["clips_by_view"], "wall_s": p["wall_s"], "items": p["items"],
            "item_s": p["item_s"], "upload_http_s": p["rest_parts"]["upload_http_s"],
            "queue_wait_s": p["rest_parts"]["queue_wait_s"]}


def measure_long_video(args: argparse.Namespace, work: Path, url: str, pid: int, queries: list[Path]) -> dict:
    """The long-video part (see the module docstring) against the server with process id `pid`."""
    longs = [work / f"long{i}.mp4" for i in range(2)]
    for i, path in enumerate(longs):
        if not path.is_file():
            make_long_video(path, args.long_seconds, args.long_period, 60 * i)
    ordinary = work / "one" / f"v{args.videos:03d}_{SOURCES[args.videos % len(SOURCES)]}.mp4"
    if not ordinary.is_file():
        ordinary = make_video(work / "one", args.videos, args.seconds, args.size)  # content not indexed yet
    long_video = {"seconds": args.long_seconds, "frame_period_s": args.long_period, "size": "64x64"}
    # the ordinary job first: the allocator keeps what the long job took, which would hide its peak
    long_video["peak_rss_ordinary_job"] = asyncio.run(job_peak_rss(url, pid, ordinary))
    log.info("ordinary job alone: %s", long_video["peak_rss_ordinary_job"])
    long_video["peak_rss_long_job"] = asyncio.run(job_peak_rss(url, pid, longs[0]))
    log.info("long job alone: %s", long_video["peak_rss_long_job"])
    long_video["queries_while_ingesting"] = asyncio.run(queries_while_ingesting(url, longs[1], queries, TEXTS))
    log.info("queries while a long video ingests: %s", long_video["queries_while_ingesting"])
    return long_video


def summary(runs: dict[str, dict]) -> dict:
    """Ingest (s of video per second, median of the rounds) and video-query latency (concurrency 1) per
    runtime, and each runtime against the first: ingest rate ratio and query speedups (> 1: faster)."""
    names = list(runs)
    out: dict = {"runtimes": names, "ingest_video_seconds_per_s": {}, "video_query_p50_ms": {},
                 "video_query_p99_ms": {}, "ratios": {}}
    for name, run in runs.items():
        out["ingest_video_seconds_per_s"][name] = run["median"]["ingest_video_seconds_per_s"]
        out["video_query_p50_ms"][name] = run["search"]["video"][0]["p50_ms"]
        out["video_query_p99_ms"][name] = run["search"]["video"][0]["p99_ms"]
    base = names[0]
    for name in names[1:]:
        out["ratios"][f"{name}_vs_{base}"] = {
            "ingest": out["ingest_video_seconds_per_s"][name] / out["ingest_video_seconds_per_s"][base],
            "video_query_p50_speedup": out["video_query_p50_ms"][base] / out["video_query_p50_ms"][name],
            "video_query_p99_speedup": out["video_query_p99_ms"][base] / out["video_query_p99_ms"][name],
        }
    return out


TEXTS = ["a person riding a bike", "a cooking show", "fireworks at night", "a cat on a sofa"]
RUNTIMES = ("torch", "openvino")


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", help="URL of a running server (default: start one)")
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each benchmark video")
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--requests", type=int, default=64, help="search requests per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="ingest rounds (each with its own stage rates)")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="DRCA_TORCH_THREADS for the server and the stage measurement (default: the setting's)")
    ap.add_argument("--runtime", choices=RUNTIMES, help="DRCA_RUNTIME for the server (default: the setting's)")
    ap.add_argument("--runtimes", help="comma-separated runtimes (e.g. torch,openvino): the whole measurement "
                    "once per runtime, each against a fresh server and data dir")
    ap.add_argument("--long-seconds", type=float, default=10_000.0, help="length of the long video (0: skip)")
    ap.add_argument("--long-period", type=float, default=30.0, help="seconds between its frames")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    runtimes: list[str | None] = [args.runtime]
    if args.runtimes:
        runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
        bad = [r for r in runtimes if r not in RUNTIMES]
        if bad or not runtimes or len(set(runtimes)) != len(runtimes) or args.runtime:
            ap.error(f"--runtimes: distinct names among {', '.join(RUNTIMES)}, without --runtime")
    if args.server and (args.runtimes or args.runtime):
        ap.error("--runtime/--runtimes start their own servers: not with --server")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    if args.torch_threads is not None:
        os.environ["DRCA_TORCH_THREADS"] = str(args.torch_threads)  # inherited by the server it starts
    work = Path(tempfile.mkdtemp(prefix="drca-bench-service-"))
    ckpt = args.checkpoint or (SHIPPED_CHECKPOINT if (SHIPPED_CHECKPOINT / "card.json").is_file() else None)
    weights = "given" if args.checkpoint else ("shipped" if ckpt else "random drca-cpu-112 (10 classes)")
    try:
        if ckpt is None:
            ckpt = random_checkpoint(work / "ckpt")
        log.info("generating %d videos of %g s at %s", args.videos, args.seconds, args.size)
        videos = make_videos(work / "videos", args.videos, args.seconds, args.size)
        queries = make_videos(work / "queries", 4, 4.0, "160x120")
        runs = {}
        for runtime in runtimes:
            log.info("measuring with runtime %s", runtime or "(the setting's)")
            run = measure(args, ckpt, work, videos, queries, runtime)
            runs[runtime or run["runtime"]] = run
        last = runs[list(runs)[-1]]
        results = {
            "weights": weights,
            "checkpoint": str(ckpt),
            "videos": args.videos,
            "video_seconds_each": args.seconds,
            "video_size": args.size,
            "server_settings": server_settings(),
            **last,  # one runtime: its fields at the top (several: the last's, and each under `runs`)
            "note": "2-core machine shared with other jobs; decode and encode share the same cores when pipelined",
        }
        if args.runtimes:
            results["runs"] = runs
            results["summary"] = summary(runs)
            log.info("summary: %s", results["summary"])
        path = write_result("service", results, args.out)
        best = max(last["rounds"], key=lambda x: x["ingest_videos_per_s"])
        log.info("best round: ingest %.2f videos/s (efficiency %.0f%% of the slower stage); wrote %s",
                 best["ingest_videos_per_s"], 100 * best["pipeline_efficiency"], path)
        return path
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
