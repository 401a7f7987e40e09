"""Subprocess for the crash test: adds videos and prints each id once `add_video` has returned.

    python -m tests.indexer.crash_writer DIR FIRST_ID

Video `v` has `1 + v % 5` segments whose vectors are seeded by `v`, so the test can check that a
recovered video is complete and intact. Snapshots are taken every few records so kills also land
during snapshot writing and log rotation.
"""

from __future__ import annotations

import sys

import numpy as np

from indexer import IndexConfig, Span, VideoIndex

DIM = 8
CONFIG = IndexConfig(dim=DIM, kind="flat", snapshot_every=7)


def video(v: int) -> tuple[list[Span], np.ndarray]:
    n = 1 + v % 5
    vecs = np.random.default_rng(v).standard_normal((n, DIM)).astype(np.float32)
    return [Span(float(i), float(i) + 0.5) for i in range(n)], vecs


def main() -> None:
    directory, first = sys.argv[1], int(sys.argv[2])
    index = VideoIndex.open(directory, CONFIG)
    v = first
    while True:
        index.add_video(v, *video(v))
        sys.stdout.write(f"{v}\n")
        sys.stdout.flush()
        v += 1


if __name__ == "__main__":
    main()
