"""Which index a service opens, and which checkpoint made its vectors.

`open_index` is the one place that opens a role's index: FAISS generations in the data dir or Milvus
generations at `milvus_uri` (`service/backends/index.py` picks them), the current generation opened, its
recorded checkpoint identity checked. A data dir's vectors and stored labels come from one checkpoint; the
index metadata records that checkpoint's identity (`checkpoint_sha256` of its weights file,
`embed_dim`, and its path for the messages). Starting with another checkpoint raises `CheckpointMismatch`
(one line naming both and the command that re-embeds: `drca reindex --checkpoint NEW`).

`drca reindex` (service/reindex.py) builds the next generation, tagged by the new checkpoint's short sha,
with the labels it recomputes kept beside it in `data_dir/reindex-<generation>.labels.jsonl`; the switch
is the generation pointer (one atomic step), then the labels are written into the store and that file is
removed. `finish_switch` completes a switch that was interrupted after the pointer moved (it is called
on every start, before anything is served).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from indexer import IndexGenerations, SegmentIndex
from model.checkpoint import WEIGHTS, CheckpointError
from model.digest import sha256_file
from service.backends.index import index_generations, index_location
from service.backends.store import Label
from service.settings import Settings

if TYPE_CHECKING:
    from service.catalog import Catalog

__all__ = ["index_generations"]  # re-exported: the generations of the configured index backend

log = logging.getLogger(__name__)

SHORT = 12  # hex digits of the sha256 that name a checkpoint in messages and generation names
SHA256_HEX = re.compile(r"[0-9a-f]{64}")  # a checkpoint's sha256 as recorded


@dataclass(frozen=True)
class CheckpointIdentity:
    """What made a generation's vectors: the sha256 of the checkpoint's weights and its embedding size."""

    sha256: str
    embed_dim: int
    path: str = ""  # where it was loaded from (for messages only; the identity is the sha256)

    @property
    def short(self) -> str:
        return self.sha256[:SHORT]

    def describe(self) -> str:
        return f"{self.path or '?'} (sha256 {self.short}, {self.embed_dim}-d)"

    def as_metadata(self) -> dict[str, str]:
        return {"checkpoint_sha256": self.sha256, "embed_dim": str(self.embed_dim), "checkpoint_path": self.path}

    @classmethod
    def from_metadata(cls, meta: dict[str, str], where: str = "the index metadata") -> CheckpointIdentity | None:
        """The identity `as_metadata` recorded (None: none recorded); `DataDirDamaged` naming `where` when
        the values are not what it writes."""
        if "checkpoint_sha256" not in meta:
            return None
        sha256, dim, path = meta["checkpoint_sha256"], meta.get("embed_dim", "0"), meta.get("checkpoint_path", "")
        if not isinstance(sha256, str) or not SHA256_HEX.fullmatch(sha256):
            raise DataDirDamaged(f"{where} records no sha256 as checkpoint_sha256 ({str(sha256)[:80]!r})")
        if not isinstance(dim, str) or not dim.isascii() or not dim.isdigit() or len(dim) > 6:
            raise DataDirDamaged(f"{where} records no embedding size as embed_dim ({str(dim)[:80]!r})")
        return cls(sha256, int(dim), path if isinstance(path, str) else "")


class CheckpointMismatch(Exception):
    """The index's vectors were made by another checkpoint than the one the service was started with."""


class DataDirDamaged(Exception):
    """A file of the data dir (an index's recorded identity, a reindex's labels or state file) holds what the
    service never writes: edited or damaged. The message names it; `drca serve` stops with it (exit 2)."""


class MissingGeneration(Exception):
    """The current index generation does not exist while the metadata store holds indexed videos: serving
    an empty index would lose them silently."""


def checkpoint_identity(checkpoint: Path, embed_dim: int) -> CheckpointIdentity:
    """The identity of the checkpoint directory: the sha256 of its weights file (read, never loaded)."""
    weights = Path(checkpoint) / WEIGHTS
    try:
        sha256 = sha256_file(weights)
    except OSError as e:
        raise CheckpointError(f"cannot read {weights}: {e.strerror or e}") from None
    return CheckpointIdentity(sha256, embed_dim, str(Path(checkpoint).resolve()))


def mismatch_message(settings: Settings, recorded: CheckpointIdentity, given: CheckpointIdentity) -> str:
    return (f"the index at {index_location(settings)} holds vectors of checkpoint {recorded.describe()}, but this service was "
            f"started with {given.describe()}; re-embed the stored videos first: "
            f"drca reindex --checkpoint {given.path}")


def _check(settings: Settings, gens: IndexGenerations, name: str, identity: CheckpointIdentity) -> bool:
    """Whether generation `name` records a checkpoint (`CheckpointMismatch` if it is another one)."""
    recorded = CheckpointIdentity.from_metadata(
        gens.metadata(name), f"the metadata of index generation {name} ({index_location(settings)})")
    if recorded is not None and recorded.sha256 != identity.sha256:
        raise CheckpointMismatch(mismatch_message(settings, recorded, identity))
    return recorded is not None


def open_index(settings: Settings, identity: CheckpointIdentity,
               indexed_videos: Callable[[], int] | None = None) -> tuple[SegmentIndex, str]:
    """The current generation of the configured index and its name; made by `identity` (recorded on first
    use), else `CheckpointMismatch` (checked before the index is opened). With `indexed_videos` (the
    metadata store's count, where this index is the one that holds them): a current generation that does
    not exist is created only while that count is 0, else `MissingGeneration`."""
    gens = index_generations(settings, identity.embed_dim)
    try:
        name = gens.current()
        if indexed_videos is not None and (name is None or not gens.exists(name)) and (n := indexed_videos()):
            raise MissingGeneration(
                f"the index generation {name or '(none)'} at {index_location(settings)} does not exist, but the "
                f"metadata store holds {n} indexed videos; restore the index, or re-embed the stored videos "
                f"into a new generation: drca reindex --checkpoint {identity.path or 'CHECKPOINT'}")
        if name is None:  # a new Milvus deployment: its first generation, named for this checkpoint
            name = gens.name_for(identity.short)
            index = gens.open(name)
            gens.switch(name)
            recorded = False
        else:
            recorded = _check(settings, gens, name, identity)
            index = gens.open(name)
    finally:
        gens.close()
    if not recorded:
        try:
            if len(index):
                log.warning("the index %s records no checkpoint; its %d videos are taken to be from %s", name,
                            len(index), identity.describe())
            index.set_metadata(identity.as_metadata())
        except BaseException:
            index.close()
            raise
    return index, name


def check_identity(settings: Settings, identity: CheckpointIdentity) -> None:
    """`CheckpointMismatch` if the current generation was made by another checkpoint; opens no index (the
    CLI, before it starts anything)."""
    gens = index_generations(settings, identity.embed_dim)
    try:
        name = gens.current()
        if name is not None and gens.exists(name):
            _check(settings, gens, name, identity)
    finally:
        gens.close()


def pending_labels_path(settings: Settings, generation: str) -> Path:
    return settings.data_dir / f"reindex-{generation}.labels.jsonl"


MAX_VIDEO_ID = 2**63 - 1


def _label_row(row: object) -> tuple[int, list[Label]] | None:
    """(video id, labels) of a row `append_pending_labels` wrote; None for anything else."""
    if not isinstance(row, dict) or set(row) != {"video_id", "labels"}:
        return None
    vid, labels = row["video_id"], row["labels"]
    if type(vid) is not int or not 0 <= vid <= MAX_VIDEO_ID or not isinstance(labels, list):
        return None
    out = []
    for label in labels:
        if not (isinstance(label, list) and len(label) == 2 and isinstance(label[0], str)
                and type(label[1]) in (int, float) and math.isfinite(label[1])):
            return None
        out.append(Label(label[0], float(label[1])))
    return vid, out


def read_pending_labels(path: Path) -> dict[int, list[Label]]:
    """video id -> its recomputed labels (the last line for a video wins; a line torn by a crash, which is
    not JSON, is ignored); `DataDirDamaged` for a JSON line that is not a row this module wrote."""
    out: dict[int, list[Label]] = {}
    if not path.exists():
        return out
    for number, line in enumerate(path.read_bytes().decode(errors="replace").splitlines(), 1):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        parsed = _label_row(row)
        if parsed is None:
            raise DataDirDamaged(f"{path} line {number} is not a row of recomputed labels "
                                 '({"video_id": <id>, "labels": [[<class>, <probability>], ...]})')
        out[parsed[0]] = parsed[1]
    return out


def append_pending_labels(path: Path, video_id: int, labels: list[Label]) -> None:
    """One video's recomputed labels, appended and fsync'd (before its segments are added to the new
    generation: a video in it always has its labels)."""
    with open(path, "a") as f:
        f.write(json.dumps({"video_id": video_id, "labels": [[lb.name, lb.prob] for lb in labels]}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def finish_switch(settings: Settings, catalog: Catalog, generation: str | None) -> None:
    """Write the labels a reindex recomputed for `generation` (now current) into the store, then forget
    them. Idempotent: re-running after a crash writes the same labels again. None: no index, nothing to do."""
    if generation is None:
        return
    path = pending_labels_path(settings, generation)
    labels = read_pending_labels(path)
    if not path.exists():
        return
    catalog.relabel(labels)
    path.unlink()
    log.info("labels of %d videos from generation %s written to the store", len(labels), generation)
