"""Prometheus metrics, one registry per app (so several apps can live in one process, as in tests)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
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
        self.jobs_finished = Counter("drca_jobs_finished", "Ingest jobs finished, by outcome", ["status"],
                                     registry=self.registry)
        self.worker_up = Gauge("drca_worker_up", "1 while the in-process encoder worker runs", registry=self.registry)
        self.worker_clips = Gauge("drca_worker_decoded_clips", "Decoded clips held by the worker, waiting for "
                                  "the model (at most decode_ahead_clips + batch_size)", registry=self.registry)

    def add_state(self, videos_by_status: Callable[[], dict[str, int]], queue_depth: Callable[[], int],
                  index_size: Callable[[], tuple[int, int]]) -> None:
        self.registry.register(_StoreCollector(videos_by_status, queue_depth, index_size))
