"""Everything one service process holds, opened and closed in order: store, index, broker, encoder,
worker. The embedded default runs all of them; the gateway-only role (issue 6) runs without the
encoder and worker."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from indexer import IndexConfig, VideoIndex
from indexer.store import SQLiteMetadataStore
from model.checkpoint import CARD, CONFIG, CheckpointError, ModelCard
from service.broker import Broker, InProcessBroker
from service.catalog import Catalog
from service.metrics import VIDEO_STATUSES, ServiceMetrics
from service.settings import Settings
from service.storage import VideoStorage
from service.thumbnails import ThumbnailCache

log = logging.getLogger(__name__)


def read_card(checkpoint: Path) -> tuple[ModelCard, int]:
    """The checkpoint's card and embedding dim, without loading its weights (the gateway needs only these)."""
    try:
        card = ModelCard.model_validate_json((checkpoint / CARD).read_text())
        dim = int(json.loads((checkpoint / CONFIG).read_text())["head"]["embed_dim"])
    except FileNotFoundError:
        raise CheckpointError(
            f"no checkpoint at {checkpoint} (card.json/config.json missing); "
            "set DRCA_CHECKPOINT or --checkpoint to a checkpoint directory"
        ) from None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{checkpoint}: unreadable card or config: {e}") from None
    if dim <= 0:
        raise CheckpointError(f"{checkpoint}: the checkpoint has no embedding head")
    return card, dim


class ServiceRuntime:
    def __init__(self, settings: Settings, with_worker: bool = True) -> None:
        self.settings = settings
        self.with_worker = with_worker
        self.metrics = ServiceMetrics()
        self.card, self.embed_dim = read_card(Path(settings.checkpoint))
        self.class_names = list(self.card.class_names)
        self.store: SQLiteMetadataStore | None = None
        self.index: VideoIndex | None = None
        self.catalog: Catalog | None = None
        self.thumbnails: ThumbnailCache | None = None
        self.broker: Broker = InProcessBroker()
        self.encoder = None
        self.worker = None
        self._class_embeddings = None

    def start(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        s.tmp_dir.mkdir(parents=True, exist_ok=True)
        for stale in s.tmp_dir.glob("upload-*.part"):  # spooled uploads of a previous run: never acknowledged
            stale.unlink(missing_ok=True)
        self.store = SQLiteMetadataStore(s.store_path)
        self.index = VideoIndex.open(s.index_dir, IndexConfig(dim=self.embed_dim, allow_empty_recovery=True))
        from service.encoder import video_limits

        self.thumbnails = ThumbnailCache(s.thumbnails_dir, video_limits(s), max_concurrent=s.decode_threads)
        self.catalog = Catalog(self.store, self.index, VideoStorage(s.videos_dir), self.thumbnails)
        self.metrics.add_state(self._videos_by_status, self.broker.queue_depth, self._index_size)
        if self.with_worker:
            from service.encoder import VideoEncoder
            from service.worker import EncoderWorker

            self.encoder = VideoEncoder(s)
            self.worker = EncoderWorker(self.encoder, self.broker, self.catalog, s, self.metrics)
            self.worker.start()
        requeued = self.catalog.unfinished_jobs()
        for job in requeued:
            self.broker.enqueue(job)
        if requeued:
            log.info("re-queued %d unfinished ingest jobs from the previous run", len(requeued))

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        self.broker.close()
        if self.index is not None:
            self.index.close()
        if self.store is not None:
            self.store.close()

    # scrape-time metrics ---------------------------------------------------------------------------
    def _videos_by_status(self) -> dict[str, int]:
        return {st: self.store.count_videos(st) for st in VIDEO_STATUSES} if self.store else {}

    def _index_size(self) -> tuple[int, int]:
        if self.index is None:
            return 0, 0
        st = self.index.stats()
        return st.videos, st.segments

    @property
    def ready(self) -> bool:
        return (self.index is not None and (not self.with_worker or (self.worker is not None and self.worker.alive)))
