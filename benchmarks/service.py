"""Service throughput and latency, driving a real `drca serve` on loopback.

    python -m benchmarks.service [--checkpoint DIR] [--videos 16] [--seconds 10] [--requests 64]
    python -m benchmarks.service --server http://127.0.0.1:8000   # an already running server

Measured in one run:
- decode-only rate: the service's own decode path (probe, decord, 1 fps segment sampling, preprocess)
  over the benchmark videos with the server's `decode_threads` threads (videos/s);
- encoder-only rate: forward passes on preprocessed clips at the server's batch size (videos/s, using the
  videos' segment count);
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


def start_server(checkpoint: Path, data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
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
    """Text and video queries, one at a time, from the moment the long video's job runs until it is done.
    A query that fails (503 after `inference_timeout_s`, say) is counted in `errors`, not timed."""
    lat: dict[str, list[float]] = {"text": [], "video": []}
    errors: dict[str, dict[str, int]] = {"text": {}, "video": {}}
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        done = asyncio.Event()

        async def query_loop(_job_id: int) -> None:
            async def run() -> None:
                i = 0
                while not done.is_set():
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
    out: dict = {"job_total_s": job["timings"]["total_s"]}
    for kind, values in lat.items():
        out[kind] = {"answered": len(values), "errors": errors[kind]}
        if values:
            out[kind].update(p50_ms=1000 * statistics.median(values), p99_ms=1000 * _percentile(values, 0.99),
                             max_ms=1000 * max(values))
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
    enc.forward(clips[: settings.batch_size])  # warm-up
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(clips), settings.batch_size):
            enc.forward(clips[i : i + settings.batch_size])
        encode_s = min(encode_s, time.perf_counter() - t0)
    return {
        "decode_threads": settings.decode_threads,
        "batch_size": settings.batch_size,
        "segments": len(clips),
        "video_seconds": sum(d.duration for d in decoded),
        "decode_videos_per_s": len(videos) / decode_s,
        "encode_videos_per_s": len(videos) / encode_s,
        "encode_clips_per_s": len(clips) / encode_s,
    }


def ingest_round(url: str, enc, videos: list[Path]) -> dict:
    """Stage rates, then ingest everything over HTTP, then delete it again (so the next round re-ingests)."""
    stages = stage_rates(enc, videos)
    ing = asyncio.run(ingest(url, videos))
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
    }


async def ingest(url: str, videos: list[Path], concurrency: int = 4) -> dict:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:

        async def one(p: Path) -> float:
            async with sem:
                with open(p, "rb") as f:
                    r = await c.post("/v1/videos", files={"file": (p.name, f)})
                r.raise_for_status()
                job_id = r.json()["job_id"]
            while True:  # the job's own clock gives the finish time, so polling can be slow (cheap)
                job = await _job(c, job_id)
                if job["status"] == "done":
                    return job["created_at"] + job["timings"]["total_s"]
                if job["status"] == "failed":
                    raise RuntimeError(f"{p}: {job['error']}")
                await asyncio.sleep(0.5)

        t0 = time.time()
        ends = await asyncio.gather(*(one(p) for p in videos))
        return {"seconds": max(ends) - t0}


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
    }


def main() -> None:
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
    ap.add_argument("--long-seconds", type=float, default=10_000.0, help="length of the long video (0: skip)")
    ap.add_argument("--long-period", type=float, default=30.0, help="seconds between its frames")
    ap.add_argument("--out")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    if args.torch_threads is not None:
        os.environ["DRCA_TORCH_THREADS"] = str(args.torch_threads)  # inherited by the server it starts
    work = Path(tempfile.mkdtemp(prefix="drca-bench-service-"))
    ckpt = args.checkpoint or (SHIPPED_CHECKPOINT if (SHIPPED_CHECKPOINT / "card.json").is_file() else None)
    weights = "given" if args.checkpoint else ("shipped" if ckpt else "random drca-cpu-112 (10 classes)")
    if ckpt is None:
        ckpt = random_checkpoint(work / "ckpt")
    log.info("generating %d videos of %g s at %s", args.videos, args.seconds, args.size)
    videos = make_videos(work / "videos", args.videos, args.seconds, args.size)
    queries = make_videos(work / "queries", 4, 4.0, "160x120")
    proc = None
    try:
        url = args.server
        if url is None:
            proc, url = start_server(ckpt, work / "data")
        from service.encoding.encoder import VideoEncoder

        enc = VideoEncoder(Settings(checkpoint=ckpt, text_search=False))
        rounds = []
        for r in range(args.rounds):
            rounds.append(ingest_round(url, enc, videos))
            log.info("round %d: %s", r, {k: round(v, 3) for k, v in rounds[-1].items() if isinstance(v, float)})
        best = max(rounds, key=lambda x: x["ingest_videos_per_s"])
        # re-ingest once more so that the searches run against an index
        asyncio.run(ingest(url, videos))

        async def video_query(c: httpx.AsyncClient, i: int) -> httpx.Response:
            with open(queries[i % len(queries)], "rb") as f:
                return await c.post("/v1/search", files={"file": ("q.mp4", f.read())}, data={"k": "10"})

        texts = ["a person riding a bike", "a cooking show", "fireworks at night", "a cat on a sofa"]

        async def text_query(c: httpx.AsyncClient, i: int) -> httpx.Response:
            return await c.post("/v1/search", json={"text": texts[i % len(texts)], "k": 10})

        search = {}
        for name, fn in (("video", video_query), ("text", text_query)):
            asyncio.run(load(url, fn, 1, 2))  # warm-up
            search[name] = [asyncio.run(load(url, fn, conc, args.requests)) for conc in (1, 16)]
            log.info("%s search: %s", name, search[name])
        long_video = None
        if args.long_seconds > 0 and proc is not None:
            longs = [make_long_video(work / f"long{i}.mp4", args.long_seconds, args.long_period, 60 * i)
                     for i in range(2)]
            ordinary = make_video(work / "one", args.videos, args.seconds, args.size)  # content not indexed yet
            long_video = {"seconds": args.long_seconds, "frame_period_s": args.long_period, "size": "64x64"}
            # the ordinary job first: the allocator keeps what the long job took, which would hide its peak
            long_video["peak_rss_ordinary_job"] = asyncio.run(job_peak_rss(url, proc.pid, ordinary))
            log.info("ordinary job alone: %s", long_video["peak_rss_ordinary_job"])
            long_video["peak_rss_long_job"] = asyncio.run(job_peak_rss(url, proc.pid, longs[0]))
            log.info("long job alone: %s", long_video["peak_rss_long_job"])
            long_video["queries_while_ingesting"] = asyncio.run(queries_while_ingesting(url, longs[1], queries, texts))
            log.info("queries while a long video ingests: %s", long_video["queries_while_ingesting"])
        results = {
            "weights": weights,
            "checkpoint": str(ckpt),
            "model": {"name": enc.config.name, "img_size": enc.config.input.img_size,
                      "num_frames": enc.config.input.num_frames},
            "videos": args.videos,
            "video_seconds_each": args.seconds,
            "video_size": args.size,
            "server_settings": Settings().model_dump(include={
                "torch_threads", "decode_threads", "batch_size", "max_wait_ms", "prefetch", "decode_ahead_clips",
                "max_segments", "device"}),
            "rounds": rounds,
            "median": {k: statistics.median(r[k] for r in rounds) for k in (
                "decode_videos_per_s", "encode_videos_per_s", "ingest_videos_per_s", "ingest_video_seconds_per_s",
                "pipeline_efficiency", "efficiency_vs_shared_cpu_bound")},
            "search": search,
            "long_video": long_video,
            "note": "2-core machine shared with other jobs; decode and encode share the same cores when pipelined",
        }
        path = write_result("service", results, args.out)
        log.info("best round: ingest %.2f videos/s (efficiency %.0f%% of the slower stage); wrote %s",
                 best["ingest_videos_per_s"], 100 * best["pipeline_efficiency"], path)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
