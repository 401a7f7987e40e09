"""Real embeddings for the index benchmark (`benchmarks.index --embeddings`): every video under the given
folders embedded by the service's own encoder (`service.encoding.encoder.VideoEncoder`: its decoding,
views and runtime), every segment in every view a query gets (``original``, and the service's
`query_views`: ``mirrored``, ``inner`` when an inner picture is found).

    python -m benchmarks.embed_videos --videos /work/media/ndvr --relevance /work/media/ndvr/relevance.json \\
        --out runs/index/real.npy

Writes three files side by side:
- ``OUT.npy``: (rows, E) float32, L2-normalised, the checkpoint's embedding (its reduction applied, if any:
  embed with the full-width checkpoint to grow both widths from one file);
- ``OUT.tsv``: one line per row (after a header): ``video`` (the file's stem), ``file``, ``segment``,
  ``start``, ``end`` (seconds), ``view``, and ``origins``: the videos it is a near-duplicate of (from
  ``--relevance``, a JSON ``{video: [videos]}`` such as the NDVR set's `relevance.json`; empty for the
  others). `benchmarks.index` fits its near-duplicate residual model on these pairs;
- ``OUT.json``: the checkpoint (path, sha256, embed_dim), the runtime, the command, the files skipped
  (with why) and the wall time.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._env import environment

log = logging.getLogger("benchmarks.embed_videos")

COLUMNS = ("video", "file", "segment", "start", "end", "view", "origins")


def video_files(folders: list[Path]) -> list[Path]:
    from media.video import has_video_extension

    files: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            raise SystemExit(f"error: {folder} is not a directory")
        files += sorted(p for p in folder.rglob("*") if p.is_file() and has_video_extension(p))
    if not files:
        raise SystemExit(f"error: no video file under {', '.join(map(str, folders))}")
    return files


def read_relevance(path: Path | None) -> dict[str, list[str]]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise ValueError("expected a JSON object {video: [videos]}")
        return {str(k): [str(x) for x in v] for k, v in data.items()}
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: --relevance {path}: {e}") from None


def embed(files: list[Path], out: Path, checkpoint: Path | None, relevance: dict[str, list[str]],
          runtime: str = "auto", threads: int = 0, batch: int = 16, cache_dir: Path | None = None) -> dict:
    """Embed every file into ``out`` (.npy, with its .tsv and .json); returns the .json's content."""
    from model.checkpoint import read_checkpoint
    from service.encoding.encoder import VideoEncoder
    from service.settings import Settings

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="embed-videos-") as tmp:
        kw = {"checkpoint": checkpoint} if checkpoint else {}
        settings = Settings(data_dir=Path(tmp), device="cpu", text_search=False, runtime=runtime,
                            torch_threads=threads, runtime_cache_dir=cache_dir or Path(tmp) / "openvino", **kw)
        files_read = read_checkpoint(settings.checkpoint, weights=True)
        enc = VideoEncoder(settings, files_read)
        vectors: list[np.ndarray] = []
        rows: list[tuple] = []
        skipped: dict[str, str] = {}
        for i, path in enumerate(files):
            try:
                video = enc.open(path, query=True)
            except Exception as e:  # a file the service refuses: recorded, not fatal
                skipped[str(path)] = f"{type(e).__name__}: {e}"[:300]
                continue
            try:
                for a in range(0, len(video.segments), batch):
                    b = min(a + batch, len(video.segments))
                    vectors.append(enc.forward(video.clips(a, b))[0].astype(np.float32))
                origins = ",".join(relevance.get(path.stem, []))
                seg_of: dict[float, int] = {}
                for span, view in zip(video.segments, video.views or [], strict=True):
                    seg = seg_of.setdefault(span.start, len(seg_of))
                    rows.append((path.stem, str(path), seg, round(span.start, 3), round(span.end, 3), view, origins))
            finally:
                video.close()
            if (i + 1) % 20 == 0 or i + 1 == len(files):
                log.info("%d/%d videos, %d rows, %.0f s", i + 1, len(files), len(rows), time.perf_counter() - t0)
        if not rows:
            raise SystemExit("error: no video could be embedded")
        x = np.concatenate(vectors)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, x)
        with open(out.with_suffix(".tsv"), "w", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(COLUMNS)
            w.writerows(rows)
        meta = {
            "rows": len(x), "dim": int(x.shape[1]), "videos": len({r[0] for r in rows}),
            "near_duplicate_videos": len({r[0] for r in rows if r[6]}),
            "views": sorted({r[5] for r in rows}),
            "checkpoint": {"path": str(files_read.path), "sha256": files_read.sha256,
                           "embed_dim": files_read.config.head.embed_dim, "name": files_read.config.name},
            "encoder": enc.describe(), "command": "python -m benchmarks.embed_videos " + shlex.join(sys.argv[1:]), "skipped": skipped,
            "wall_s": round(time.perf_counter() - t0, 1), "environment": environment(),
        }
        out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=Path, action="append", required=True, help="a folder (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="the .npy to write (with .tsv and .json beside it)")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the service's (the shipped one)")
    p.add_argument("--relevance", type=Path, default=None, help="JSON {video: [videos it is a copy of]}")
    p.add_argument("--runtime", default="auto", choices=("auto", "torch", "openvino"))
    p.add_argument("--threads", type=int, default=0, help="encoder threads (0: torch's default)")
    p.add_argument("--batch", type=int, default=16, help="clips per forward pass")
    p.add_argument("--cache-dir", type=Path, default=None, help="keep the compiled OpenVINO model here")
    args = p.parse_args(argv)
    if args.out.suffix != ".npy":
        raise SystemExit(f"error: --out must end in .npy, got {args.out}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    meta = embed(video_files(args.videos), args.out, args.checkpoint, read_relevance(args.relevance), args.runtime,
                 args.threads, args.batch, args.cache_dir)
    log.info("wrote %s: %d rows of %d-d from %d videos (%d near-duplicates), %d skipped, %.0f s", args.out,
             meta["rows"], meta["dim"], meta["videos"], meta["near_duplicate_videos"], len(meta["skipped"]),
             meta["wall_s"])


if __name__ == "__main__":
    main()
