"""The active generation: the checkpoint a service serves with (its identity, card and, where the model
runs, its encoder) and the index generation that holds that checkpoint's vectors, as one immutable value.

Every part that serves it (the catalog's index writes, search, the routes, the encoder worker) reads it
from one `Active` holder; an online reindex (service/reindex.py) replaces it whole, under the catalog lock,
in one assignment (`Active.swap`), so nothing ever sees the new model with the old index or the reverse.
A request takes it once (`Active.current`) and uses that one throughout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from indexer import SegmentIndex
from model.checkpoint import (
    Background,
    CheckpointError,
    CheckpointFiles,
    CheckpointMissing,
    ModelCard,
    read_checkpoint,
)
from service.generations import CheckpointIdentity

if TYPE_CHECKING:
    from service.encoding.encoder import VideoEncoder


def read_serving_checkpoint(path: Path, weights: bool) -> CheckpointFiles:
    """The checkpoint a service or reindex runs with, read once: config and card parsed, the weights
    hashed, and their bytes kept when `weights` (the model is loaded from them), the card's background set
    loaded. `CheckpointError` with one line when it is missing, malformed, has no embedding head, or its
    background set is not of these weights (`model.checkpoint.read_background`)."""
    try:
        files = read_checkpoint(path, weights=weights)
    except CheckpointMissing as e:
        raise CheckpointError(f"no checkpoint at {path} ({e}); set DRCA_CHECKPOINT or --checkpoint to a "
                              "checkpoint directory") from None
    if files.config.head.embed_dim <= 0:
        raise CheckpointError(f"{path}: the checkpoint has no embedding head")
    return files


def identity_of(files: CheckpointFiles) -> CheckpointIdentity:
    """What the index records about the checkpoint that made its vectors."""
    return CheckpointIdentity(files.sha256, files.config.head.embed_dim, str(Path(files.path).resolve()))


@dataclass(frozen=True)
class ActiveGeneration:
    checkpoint: CheckpointIdentity
    card: ModelCard
    class_names: tuple[str, ...]
    clip_frames: int  # the model's frames per clip: how uploads are planned into segments
    generation: str | None  # the index generation; None: a role without an index (a worker on the vector stream)
    index: SegmentIndex | None
    encoder: VideoEncoder | None  # None: a gateway (the model runs in the workers)
    background: Background | None = None  # the card's background set: the search's match_score

    @classmethod
    def of(cls, files: CheckpointFiles, generation: str | None, index: SegmentIndex | None,
           encoder: VideoEncoder | None) -> ActiveGeneration:
        return cls(identity_of(files), files.card, tuple(files.card.class_names), files.config.input.num_frames,
                   generation, index, encoder, files.background)

    @property
    def embed_dim(self) -> int:
        return self.checkpoint.embed_dim


class Active:
    """The one reference to the active generation that every serving part shares."""

    def __init__(self, generation: ActiveGeneration) -> None:
        self._current = generation

    @property
    def current(self) -> ActiveGeneration:
        return self._current

    def swap(self, generation: ActiveGeneration) -> ActiveGeneration:
        """Serve `generation` from now on (one assignment; the caller holds the catalog lock); the previous one."""
        previous, self._current = self._current, generation
        return previous
