"""Prometheus metrics, one registry per app (so several apps can live in one process, as in tests)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily


class _StoreCollector:
    """Scrape-time gauges read from the metadata store, the broker and the index."""

    def __init__(self, videos_by_status: Callable[[], dict[str, int]], queue_depth: Callable[[], int],
                 index_size: Callable[[], tuple[int, int]]) -> None:
        self._videos, self._queue, self._index = videos_by_status, queue_depth, index_size

    def collect(self):  # noqa: ANN201 - prometheus_client collector protocol
        g = GaugeMetricFamily("drca_videos", "Videos in the metadata store by status (= their ingest job's state)",
                              labels=["status"])
        for status, n in self._videos().items():
            g.add_metric([status], n)
        yield g
        yield GaugeMetricFamily("drca_queue_depth", "Ingestion jobs waiting for a worker", value=self._queue())
        videos, segments = self._index()
        yield GaugeMetricFamily("drca_index_videos", "Videos in the vector index", value=videos)
        yield GaugeMetricFamily("drca_index_segments", "Segment vectors in the vector index", value=segments)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_latency = Histogram(
            "drca_request_seconds", "HTTP request latency by route", ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.batch_clips = Histogram(
            "drca_encoder_batch_clips", "Clips per encoder forward pass", registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        self.forward_seconds = Histogram(
            "drca_encoder_forward_seconds", "Encoder forward pass time", registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.decode_seconds = Histogram(
            "drca_decode_seconds", "Decode + preprocess time per video", registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        # the profile of the ingest and query paths (benchmarks/service.py reads it): seconds per item in each
        # stage, by path (ingest, reindex, query: a video query, classify) and stage (open: probing the
        # container, opening the decoder, planning the segments; decode: the frames; preprocess; views:
        # borders, inner picture, extra views; forward: the item's share of its
        # batches; text: metadata embedding; index: the durable add; commit: the records up to the job's own
        # (recorded before it is marked done, a reply before it is sent); spool: the query's
        # upload read; search: the index search of its views). Stages are disjoint; what they leave out of an
        # item's time is waiting (queues, batching), HTTP and bookkeeping
        self.stage_seconds = Histogram(
            "drca_stage_seconds", "Seconds per item in each stage of the ingest and query paths",
            ["path", "stage"], registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.encoder_clips = Counter("drca_encoder_clips", "Clips through the encoder's forward pass, by path "
                                     "and view", ["path", "view"], registry=self.registry)
        self.encoder_info = Info("drca_encoder", "What runs the encoder: runtime, precision, threads, batch size",
                                 registry=self.registry)
        self.jobs_finished = Counter("drca_jobs_finished", "Ingest jobs finished, by outcome", ["status"],
                                     registry=self.registry)
        self.worker_up = Gauge("drca_worker_up", "1 while the in-process encoder worker runs", registry=self.registry)
        self.worker_clips = Gauge("drca_worker_decoded_clips", "Decoded clips held by the worker, waiting for "
                                  "the model (at most decode_ahead_clips + batch_size)", registry=self.registry)

    def add_state(self, videos_by_status: Callable[[], dict[str, int]], queue_depth: Callable[[], int],
                  index_size: Callable[[], tuple[int, int]]) -> None:
        self.registry.register(_StoreCollector(videos_by_status, queue_depth, index_size))


def read_profile(text: str) -> dict[str, dict[str, dict[str, float]]]:
    """The profile in a `/metrics` answer, by path: `seconds` and `items` (observations) per stage of
    `drca_stage_seconds`, and `clips` per view of `drca_encoder_clips`. Counters since the process started:
    a benchmark takes the difference of two reads (`profile_delta`)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, dict[str, float]]] = {}

    def slot(path: str, kind: str) -> dict[str, float]:
        return out.setdefault(path, {"seconds": {}, "items": {}, "clips": {}})[kind]

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "drca_stage_seconds_sum":
                slot(s.labels["path"], "seconds")[s.labels["stage"]] = s.value
            elif s.name == "drca_stage_seconds_count":
                slot(s.labels["path"], "items")[s.labels["stage"]] = s.value
            elif s.name == "drca_encoder_clips_total":
                slot(s.labels["path"], "clips")[s.labels["view"]] = s.value
    return out


def profile_delta(after: dict, before: dict) -> dict[str, dict[str, dict[str, float]]]:
    """`after - before` of two `read_profile`s (paths and keys of `after`)."""
    return {path: {kind: {k: v - before.get(path, {}).get(kind, {}).get(k, 0.0) for k, v in values.items()}
                   for kind, values in kinds.items()}
            for path, kinds in after.items()}


def read_info(text: str, name: str = "drca_encoder") -> dict[str, str]:
    """The labels of an Info metric (`drca_encoder_info`) in a `/metrics` answer; {} when it is not there."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == f"{name}_info":
                return dict(s.labels)
    return {}
