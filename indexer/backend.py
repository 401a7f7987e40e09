"""The contract of a segment vector store, and of the generations one deployment keeps.

`SegmentIndex` is the index as the service uses it: add or replace a video's segment vectors, delete a
video, search per video with exclusions, count, record metadata, close. `VideoIndex` (FAISS, embedded:
`indexer/index.py`) and `MilvusVideoIndex` (`indexer/milvus_index.py`) implement it;
`tests/indexer/test_backend_contract.py` runs one suite against both.

`IndexGenerations`: a deployment keeps one generation of vectors per embedding model. New vectors go into
a new generation while searches use the current one; `switch` makes another current in one atomic step.
`FaissGenerations` keeps them as sibling directories and names the current one in a pointer file;
`MilvusGenerations` as collections behind an alias.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from indexer import wal
from indexer.errors import DamagedIndex
from indexer.faiss_index import IndexConfig
from indexer.index import Aggregation, IndexStats, Span, StoredVideo, VideoHit, VideoIndex, read_metadata

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@runtime_checkable
class SegmentIndex(Protocol):
    @property
    def dim(self) -> int: ...

    def add_video(self, video_id: int, segments: list[Span], vectors: np.ndarray) -> None:
        """Add or replace (every old segment goes) a video's segments; durable on return."""

    def add_videos(self, items: list[tuple[int, list[Span], np.ndarray]]) -> None:
        """Several `add_video`s; all are validated before anything is written."""

    def delete_video(self, video_id: int) -> bool:
        """Delete the video's segments; False if it had none."""

    def get(self, video_id: int) -> StoredVideo | None: ...

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        query_segments: list[Span] | None = None,
        aggregation: Aggregation = "max",
        min_score: float | None = None,
        exclude_ids: set[int] | frozenset[int] = frozenset(),
    ) -> list[VideoHit]:
        """The top-k videos for query segments (Q, D), best first (docs/indexer.md)."""

    def __len__(self) -> int:
        """Videos stored."""

    def __contains__(self, video_id: object) -> bool: ...

    def count_segments(self) -> int:
        """Segment vectors stored (replaced and deleted ones do not count)."""

    def stats(self) -> IndexStats: ...

    def metadata(self) -> dict[str, str]:
        """What the owner recorded about these vectors (e.g. the checkpoint that made them)."""

    def set_metadata(self, values: dict[str, str]) -> None:
        """Merge `values` into the metadata; durable on return."""

    def close(self) -> None: ...


class IndexGenerations(Protocol):
    def current(self) -> str | None:
        """The generation searches use; None before there is one."""

    def name_for(self, tag: str) -> str:
        """The generation name for `tag` (letters, digits, `_`)."""

    def exists(self, name: str) -> bool: ...

    def metadata(self, name: str) -> dict[str, str]:
        """Generation `name`'s metadata without opening it ({} if it has none or does not exist)."""

    def open(self, name: str) -> SegmentIndex:
        """Open (creating it if needed) generation `name`."""

    def switch(self, name: str) -> None:
        """Make `name` the current generation, in one atomic step."""

    def drop(self, name: str) -> None:
        """Delete a generation that is not the current one."""

    def close(self) -> None: ...


class FaissGenerations:
    """FAISS generations: `<root>` (the first) and siblings `<root>.<tag>`; `<root>.current` names the
    current one (absent: `<root>` itself). The pointer is replaced atomically (written, fsync'd, renamed)."""

    def __init__(self, root: str | Path, config: IndexConfig) -> None:
        self.root = Path(root)
        self.config = config
        self.pointer = self.root.with_name(self.root.name + ".current")

    def _path(self, name: str) -> Path:
        if not _NAME.match(name) or name == self.pointer.name:
            raise ValueError(f"bad generation name {name!r}")
        return self.root.with_name(name)

    def current(self) -> str:
        """The generation the pointer names (`<root>` or `<root>.<tag>`); `DamagedIndex` for anything else."""
        if not self.pointer.exists():
            return self.root.name
        try:
            name = self.pointer.read_bytes().decode().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise DamagedIndex(f"the index pointer {self.pointer} cannot be read ({e})") from None
        ours = name == self.root.name or name.startswith(self.root.name + ".")
        if not ours or not _NAME.match(name) or name == self.pointer.name:
            raise DamagedIndex(f"the index pointer {self.pointer} names no index generation ({name[:80]!r}); "
                               f"it holds {self.root.name} or {self.root.name}.<tag>")
        return name

    def name_for(self, tag: str) -> str:
        return f"{self.root.name}.{tag}"

    def exists(self, name: str) -> bool:
        return self._path(name).is_dir()

    def metadata(self, name: str) -> dict[str, str]:
        return read_metadata(self._path(name))

    def open(self, name: str) -> VideoIndex:
        return VideoIndex.open(self._path(name), self.config)

    def switch(self, name: str) -> None:
        if not self.exists(name):
            raise ValueError(f"no index generation {name} beside {self.root}")
        wal.write_atomic(self.pointer, name.encode())

    def drop(self, name: str) -> None:
        if name == self.current():
            raise ValueError(f"{name} is the current generation")
        shutil.rmtree(self._path(name), ignore_errors=True)

    def close(self) -> None:
        pass
