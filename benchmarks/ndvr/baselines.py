"""Baselines of the NDVR benchmark: tiny grey thumbnails and Meta's vPDQ. Both implement :class:`Method`.

**Thumbnails** (``thumb``). Per video: 16 frames at the centres of 16 equal spans of the frame index
(``media.sampling.uniform_sample`` in test mode), decoded with the repo's reader; each frame to grey
(ITU-R 601 luma), area-resized to 16x16 (the whole frame, aspect not kept), flattened to 256 values, the
frame's mean subtracted, L2-normalised (a flat frame stays a zero vector). Video similarity is Chamfer,
the same aggregation as the DRCA method: the mean over the query's 16 frames of the best cosine against
the database video's 16 frames.

**vPDQ** (``vpdq``, PyPI ``vpdq``, needs the ``bench`` extra). Per video: ``vpdq.computeHash(path)`` with
its default of one PDQ hash per second. Matching follows Meta's brute-force matcher
(python-threatexchange ``vpdq_brute_hasher.match_VPDQ_hash_brute``): drop frames of quality below 50,
drop repeated hashes, and count a query hash as matched when some hash of the database video is within
Hamming distance 31 (``<=``). The similarity used for ranking is the *query match fraction* (Meta's
``query_match_percent`` / 100): the share of the query's hashes that match. A query left with no hash
after the quality filter scores 0 against everything. Meta declares a match when both the query and the
target fractions pass a threshold (80 %); a ranking needs a score, and the query side is the one that
is unaffected when the query is a sub-clip.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from media.sampling import uniform_sample
from media.video import open_video
from training.metrics import chamfer_matrix as training_chamfer_matrix


class Method(Protocol):
    name: str

    def describe(self, path: Path) -> np.ndarray:
        """The descriptor of one video (any array; the method's ``similarity`` reads it)."""
        ...

    def similarity(self, queries: Sequence[np.ndarray], database: Sequence[np.ndarray]) -> np.ndarray:
        """(Q, N) similarities, higher is more similar."""
        ...


def chamfer_matrix(queries: Sequence[np.ndarray], database: Sequence[np.ndarray]) -> np.ndarray:
    """(Q, N) Chamfer similarity of L2-normalised row sets (``training.metrics.chamfer_matrix``): mean over
    query rows of the max dot product against the rows of each database video."""
    if any(len(d) == 0 for d in database) or any(len(q) == 0 for q in queries):
        raise ValueError("every video needs at least one row")
    return training_chamfer_matrix([torch.from_numpy(np.asarray(q, dtype=np.float32)) for q in queries],
                                   [torch.from_numpy(np.asarray(d, dtype=np.float32)) for d in database])


# ------------------------------------------------------------------------------------- thumbnails
LUMA = (0.299, 0.587, 0.114)


class ThumbnailMethod:
    name = "thumb"

    def __init__(self, num_frames: int = 16, size: int = 16) -> None:
        self.num_frames = num_frames
        self.size = size

    def describe(self, path: Path) -> np.ndarray:
        """float32 (num_frames, size*size), rows mean-centred and L2-normalised."""
        with open_video(path) as r:
            sample = uniform_sample(r.info.num_frames, r.info.fps, self.num_frames, test_mode=True,
                                    frame_times=r.frame_times)
            frames = r.get_frames(sample.indices).frames  # uint8 (T, H, W, C)
        return self.thumbnails(frames)

    def thumbnails(self, frames: torch.Tensor) -> np.ndarray:
        """uint8 (T, H, W, 3) -> float32 (T, size*size)."""
        x = frames.float()
        grey = (x * torch.tensor(LUMA)).sum(dim=-1)  # (T, H, W)
        small = F.interpolate(grey[:, None], size=(self.size, self.size), mode="area")[:, 0]
        v = small.reshape(len(small), -1)
        v = v - v.mean(dim=1, keepdim=True)
        return F.normalize(v, dim=1).numpy().astype(np.float32)

    def similarity(self, queries: Sequence[np.ndarray], database: Sequence[np.ndarray]) -> np.ndarray:
        return chamfer_matrix(queries, database)


# ------------------------------------------------------------------------------------- vPDQ
class VPDQMethod:
    name = "vpdq"

    def __init__(self, seconds_per_hash: float = 1.0, quality_tolerance: int = 50,
                 distance_tolerance: int = 31) -> None:
        import vpdq  # the `bench` extra; imported here so the rest works without it

        self._vpdq = vpdq
        self.seconds_per_hash = seconds_per_hash
        self.quality_tolerance = quality_tolerance
        self.distance_tolerance = distance_tolerance

    def describe(self, path: Path) -> np.ndarray:
        """uint8 (F, 256) bits of the distinct hashes of quality >= quality_tolerance (F may be 0)."""
        feats = self._vpdq.computeHash(str(path), seconds_per_hash=self.seconds_per_hash)
        if not feats:
            raise RuntimeError(f"{path}: vpdq produced no hash (it could not decode the video)")
        hexes = list(dict.fromkeys(f.hex for f in feats if f.quality >= self.quality_tolerance))
        return hashes_to_bits(hexes)

    def similarity(self, queries: Sequence[np.ndarray], database: Sequence[np.ndarray]) -> np.ndarray:
        return query_match_fraction(queries, database, self.distance_tolerance)


def query_match_fraction(
    queries: Sequence[np.ndarray], database: Sequence[np.ndarray], distance_tolerance: int = 31
) -> np.ndarray:
    """(Q, N): the share of a query's hashes (uint8 (F, 256) bits) within ``distance_tolerance`` of some
    hash of the database video; 0 where either side has no hash."""
    out = np.zeros((len(queries), len(database)), dtype=np.float64)
    nonempty = [i for i, d in enumerate(database) if len(d)]
    if not nonempty:
        return out
    db = np.concatenate([database[i] for i in nonempty]).astype(np.float32)
    starts = np.cumsum([0, *[len(database[i]) for i in nonempty][:-1]])
    for qi, q in enumerate(queries):
        if not len(q):
            continue
        matched = hamming(q.astype(np.float32), db) <= distance_tolerance  # (Fq, total)
        hit = np.maximum.reduceat(matched.astype(np.uint8), starts, axis=1)  # (Fq, non-empty videos)
        out[qi, nonempty] = hit.mean(axis=0)
    return out


def hashes_to_bits(hexes: Sequence[str]) -> np.ndarray:
    """64-digit hex PDQ hashes -> uint8 (F, 256) bits."""
    if not hexes:
        return np.zeros((0, 256), dtype=np.uint8)
    raw = np.frombuffer(b"".join(bytes.fromhex(h) for h in hexes), dtype=np.uint8).reshape(len(hexes), 32)
    return np.unpackbits(raw, axis=1)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(Fa, Fb) Hamming distances between float 0/1 bit rows."""
    return a @ (1.0 - b).T + (1.0 - a) @ b.T
