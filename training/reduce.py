"""`drca train reduce`: fit a compact embedding (PCA or PCA-whitening, `model.reduction`) for a checkpoint and
write a new checkpoint that embeds with it.

The fit takes the checkpoint's full-width embeddings (the L2-normalised feature, whatever reduction the
checkpoint already has is left out) of training data:

- ``--videos DIR``: every video file under DIR, cut into the service's segments (``segment_fps`` frames a
  second, clips of the model's frames; ``stride_s`` below the window adds overlapping ones), the active
  picture inside constant-colour borders as the service embeds it, with ``views`` (the query views
  ``mirrored`` / ``inner`` too when asked); ``exclude_heldout`` leaves out the held-out real videos of
  `training/data/heldout.json` (a `drca media fetch-real` folder holds them);
- ``--stem-cache DIR``: the training clips of a `drca train shipped` stem cache, every view (the anchor and
  its near-duplicate copies), through `HybridDRCA.forward_stem` (no stem is run: seconds).

The new checkpoint is the old one's weights plus ``reduction.mean`` / ``reduction.projection``, its
config with ``head.embed_dim`` = the reduced size and ``head.reduction`` = the kind, and its card with
the command, the fit's data and figures (`ReductionReport`). Its weights file, so its sha256, differs: a
data dir indexed with another checkpoint refuses it until `drca reindex`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from model.checkpoint import (
    LoadedCheckpoint,
    ModelCard,
    Network,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from model.config import DRCAConfig
from model.reduction import MEAN, PROJECTION, ReductionFit, fit_reduction

log = logging.getLogger(__name__)

FitKind = Literal["pca", "whiten"]


@dataclass(frozen=True)
class ReductionConfig:
    """The reduction `drca train shipped` fits after training (`dim` 0: none) and `drca train reduce`'s defaults."""

    dim: int = 0
    kind: FitKind = "pca"


@contextlib.contextmanager
def full_width(model: Network) -> Iterator[Network]:
    """The network embedding its full-width feature (its reduction, if any, left out) inside the block."""
    saved = model.reduction
    model.reduction = None
    try:
        yield model
    finally:
        model.reduction = saved


def with_reduction(model: Network, fit: ReductionFit) -> Network:
    """A copy of ``model`` (eval mode, on the CPU) that embeds with ``fit``: every other tensor is the model's."""
    cfg: DRCAConfig = model.cfg
    new_cfg = replace(cfg, head=replace(cfg.head, embed_dim=int(fit.projection.shape[0]), reduction=fit.kind))
    out = build_model(new_cfg)
    state = {k: v for k, v in model.state_dict().items() if k not in (MEAN, PROJECTION)}
    missing, unexpected = out.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {MEAN, PROJECTION}:
        raise RuntimeError(f"copying the network into the reduced one: missing {missing}, unexpected {unexpected}")
    out.reduction.load_fit(fit)
    return out.eval()


# --- the fit's data ------------------------------------------------------------------------------------


def video_files(folder: str | Path, exclude_heldout: bool = False) -> list[Path]:
    """Every file under ``folder`` with a video extension, sorted; without the held-out real videos
    (`training/data/heldout.json`, by file name) when ``exclude_heldout``."""
    from media.video import has_video_extension

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a directory")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and has_video_extension(p))
    if exclude_heldout:
        from training.data.distill import load_split

        heldout = load_split().heldout_videos
        files = [p for p in files if p.name not in heldout]
    if not files:
        raise ValueError(f"{folder} holds no video file" + (" besides the held-out ones" if exclude_heldout else ""))
    return files


@torch.inference_mode()
def embed_videos(model: Network, files: list[Path], segment_fps: float = 1.0, stride_s: float = 0.0,
                 views: tuple[str, ...] = ("original",), batch_size: int = 16) -> np.ndarray:
    """Full-width embeddings (N, D) of every segment of every file in every view (see the module docstring).
    A file that does not decode is skipped with a warning."""
    from media.sampling import fixed_segments
    from media.segments import decode_segments, plan_views
    from media.video import VideoError, open_video
    from training.embed import embed_clips

    inp = model.cfg.input
    window = inp.num_frames / segment_fps
    out: list[np.ndarray] = []
    with full_width(model):
        for path in files:
            try:
                reader = open_video(path)
            except VideoError as e:
                log.warning("%s: skipped (%s)", path, e)
                continue
            try:
                info = reader.info
                segs = fixed_segments(info.num_frames, info.fps, window_s=window, stride_s=stride_s or window,
                                      frames_per_segment=inp.num_frames, frame_times=reader.frame_times,
                                      duration=info.duration)
                plan, _ = plan_views(reader, segs, inp, remove_borders=True, views=views)  # type: ignore[arg-type]
                for a in range(0, len(segs), batch_size):
                    clips = decode_segments(reader, segs[a : a + batch_size], plan)
                    out.append(embed_clips(model, clips, batch_size).embeddings.numpy())
            except VideoError as e:
                log.warning("%s: skipped (%s)", path, e)
            finally:
                reader.close()
            log.info("%s: %d embeddings so far", path.name, sum(len(x) for x in out))
    if not out:
        raise ValueError("no video could be decoded")
    return np.concatenate(out)


@torch.inference_mode()
def embed_stem_cache(model: Network, cache_dir: str | Path, split: str = "train", batch_size: int = 64) -> np.ndarray:
    """Full-width embeddings (clips x views, D) of a stem cache's ``split`` clips, every view."""
    from model.hybrid import HybridDRCA
    from training.data.stem_cache import StemCache

    if not isinstance(model, HybridDRCA):
        raise ValueError("a stem cache holds the lite0 stem's outputs: it needs a lite0 (HybridDRCA) checkpoint")
    cache = StemCache(cache_dir)
    idx = cache.indices(split)
    if not idx:
        raise ValueError(f"{cache_dir}: no complete {split} clip in the stem cache")
    views = cache.shapes["early"][0]
    out = []
    with full_width(model):
        model.eval()
        for s in range(0, len(idx), batch_size):
            for v in range(views):
                out.append(model.forward_stem(cache.outputs(idx[s : s + batch_size], v)).embedding.float().numpy())
    return np.concatenate(out)


# --- the checkpoint -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReductionReport:
    path: Path
    fit: ReductionFit
    data: str

    def card_metrics(self) -> dict[str, float | int | str]:
        f = self.fit
        return {"reduction": f.kind, "reduction_dim": int(f.projection.shape[0]), "reduction_samples": f.samples,
                "reduction_explained_variance": round(f.explained_variance, 4), "reduction_data": self.data}


def reduce_checkpoint(checkpoint: str | Path, out: str | Path, dim: int, kind: FitKind = ReductionConfig.kind,
                      videos: str | Path | Sequence[str | Path] | None = None,
                      stem_cache: str | Path | None = None,
                      segment_fps: float = 1.0, stride_s: float = 0.0, views: tuple[str, ...] = ("original",),
                      command: str = "", exclude_heldout: bool = False) -> ReductionReport:
    """Fit a ``kind`` reduction to ``dim`` on ``videos`` (a folder, or several) or ``stem_cache`` (exactly
    one of the two) and write the new checkpoint to ``out`` (which must not be ``checkpoint``)."""
    if (videos is None) == (stem_cache is None):
        raise ValueError("give the fit's data: exactly one of --videos DIR and --stem-cache DIR")
    if Path(out).resolve() == Path(checkpoint).resolve():
        raise ValueError("--out must be a new directory, not the checkpoint itself (its identity changes)")
    if Path(out).exists():
        raise ValueError(f"{out} exists: the reduced checkpoint is written to a new directory")
    ck: LoadedCheckpoint = load_checkpoint(checkpoint)
    if ck.text_head is not None:
        raise ValueError(f"{checkpoint} has a text head, trained for its {ck.config.head.embed_dim}-d embedding: "
                         "reduce a checkpoint without one, then train the text head on the result "
                         "(drca train text --set init_from=OUT)")
    if videos is not None:
        folders = [videos] if isinstance(videos, (str, Path)) else list(videos)
        files = [f for folder in folders for f in video_files(folder, exclude_heldout)]
        x = embed_videos(ck.model, files, segment_fps, stride_s, views)
        data = (f"{len(x)} segment embeddings ({', '.join(views)}) of the videos under "
                f"{', '.join(str(f) for f in folders)}"
                + (" but the held-out ones" if exclude_heldout else ""))
    else:
        x = embed_stem_cache(ck.model, stem_cache)
        data = f"{len(x)} embeddings of the training clips (every view) of the stem cache {stem_cache}"
    log.info("fitting a %s reduction to %d dimensions on %d embeddings", kind, dim, len(x))
    fit = fit_reduction(x, dim, kind)
    model = with_reduction(ck.model, fit)
    report = ReductionReport(Path(out), fit, data)
    card: ModelCard = ck.card.model_copy(update={
        "commands": [*ck.card.commands, command or f"drca train reduce --dim {dim} --kind {kind}"],
        "metrics": {**ck.card.metrics, **report.card_metrics()},
        # the copy threshold and its background set were calibrated on the full-width embeddings of the input
        # weights: a reduced checkpoint gets its own (benchmarks/ndvr/calibrate.py), none until then
        "match": None,
    })
    save_checkpoint(out, model, card)
    log.info("reduced checkpoint (%s to %d-d, %.1f%% of the training variance kept) written to %s", kind, dim,
             100 * fit.explained_variance, out)
    return report
