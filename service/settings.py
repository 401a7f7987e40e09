"""Service settings: one pydantic-settings class, every default in one place.

Values come from (highest first) keyword arguments, `DRCA_*` environment variables, the settings file
named by `DRCA_SETTINGS_FILE` (a `.env`-style file of `DRCA_*` lines), then the defaults below.
List values (`DRCA_API_KEYS`) are JSON: `DRCA_API_KEYS='["key-one", "key-two"]'`.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from media.video import VideoLimits
from model import SHIPPED_CHECKPOINT

#: `batch_size` when it is not set, by the runtime that runs the forward pass (`Settings.batch_size_for`)
DEFAULT_BATCH_SIZE_OPENVINO = 4
DEFAULT_BATCH_SIZE_TORCH = 16


def read_key_file(path: Path) -> list[str]:
    """API keys from a file, one a line; blank lines and `#` comments are skipped. ValueError if none."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the key file {path}: {e}") from None
    keys = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not keys:
        raise ValueError(f"the key file {path} has no keys")
    return keys


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DRCA_",
        env_file=os.environ.get("DRCA_SETTINGS_FILE"),
        env_file_encoding="utf-8",
        extra="ignore",
    )

    # where things are
    checkpoint: Path = SHIPPED_CHECKPOINT
    data_dir: Path = Path("./data")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)

    # limits (bad input -> 4xx)
    max_upload_bytes: int = Field(512 * 1024**2, gt=0)
    max_pixels: int = Field(4096 * 2304, gt=0)  # per frame, width x height
    max_duration_s: float = Field(3 * 3600.0, gt=0)
    max_segments: int = Field(2048, ge=1)  # segments per video (indexed or query); more: 422 video_too_long
    # the cost bound per byte (F8): a file must hold at least this many bytes per segment, or 422
    # video_too_sparse; a still picture with a frame every 30 s is a few KB for a thousand segments of work
    # (about a minute of worker time), while any video at 1 frame/s or more has well over 32. 0: off
    min_bytes_per_segment: int = Field(32, ge=0)
    max_k: int = Field(100, ge=1)
    max_page: int = Field(1000, ge=1)
    thumbnail_cache_bytes: int = Field(256 * 1024**2, ge=1)  # on disk; least recently used files go first

    # HTTP connections (slow or stalled clients are cut off; docs/api.md "Timeouts")
    header_timeout_s: float = Field(10.0, gt=0)  # request line + headers must arrive within this
    body_timeout_s: float = Field(30.0, gt=0)  # longest pause between two pieces of a request body
    # after body_timeout_s of waiting for a body, it must have come at this average rate (bytes/s) or more
    body_min_rate_bytes_s: float = Field(16 * 1024.0, ge=0)
    body_deadline_s: float = Field(1800.0, gt=0)  # a whole request body, from the request's start
    max_concurrent_uploads: int = Field(32, ge=1)  # requests receiving a body at once; more: 503 + Retry-After
    # a keep-alive connection without a new request is closed; longer than common clients' own idle expiry
    # (httpx: 5 s), so that a client drops an idle pooled connection before the server closes it under it
    idle_timeout_s: float = Field(15.0, gt=0)
    # addresses (or networks, or "*") of reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are
    # believed; none by default, so a client on loopback cannot pose as other addresses (docs/api.md)
    trusted_proxies: list[str] = Field(default_factory=list)
    # Host names this server answers to ("*": any; "*.example.org": its subdomains); others get 400. None:
    # loopback names when `host` is a loopback address (DNS rebinding cannot reach it), else any
    allowed_hosts: list[str] | None = None

    # security: when non-empty, every /v1 call needs `Authorization: Bearer <one of these>`
    api_keys: list[SecretStr] = Field(default_factory=list)
    # or (better: not in `ps` or the environment of every child) a file of keys, one a line (blank lines and
    # `#` comments skipped); its keys are added to api_keys
    api_keys_file: Path | None = None
    # the admin routes (/v1/admin/*: the online reindex) are off (403 `admin_disabled`) unless admin keys are
    # set; then they need `Authorization: Bearer <admin key>`, and an API key is refused (403). Admin keys
    # must differ from the API keys. A file of keys as for api_keys_file
    admin_keys: list[SecretStr] = Field(default_factory=list)
    admin_keys_file: Path | None = None
    # a checkpoint named in an admin request must be a directory inside one of these; none: every one refused
    admin_checkpoint_dirs: list[Path] = Field(default_factory=list)
    admin_checkpoint_max_bytes: int = Field(4 * 1024**3, gt=0)  # its model.safetensors, at most
    admin_checkpoint_check_s: float = Field(60.0, gt=0)  # checking (hashing) it takes longer: 503
    # POST /v1/admin/reindex per admin key: `burst` in a row, then one more every 1/rate s (429 until then); 0: off
    admin_rate_limit_per_s: float = Field(0.2, ge=0)
    admin_rate_limit_burst: int = Field(5, ge=1)

    # encoder worker
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # what runs the model's forward pass (service/encoding/inference.py): "auto" is OpenVINO on a CPU device and torch
    # on CUDA; "torch" is the reference path everywhere. OpenVINO's precision: f32, or bf16 (opt-in, on a CPU
    # with bf16 instructions); its compiled model is cached per checkpoint (None: data_dir/cache/openvino).
    runtime: Literal["auto", "torch", "openvino"] = "auto"
    runtime_precision: Literal["f32", "bf16"] = "f32"
    runtime_cache_dir: Path | None = None
    # OpenVINO's inference threads (`INFERENCE_NUM_THREADS`); 0: `torch_threads` when that is set, else every
    # core the process may run on (its threads run at `worker_nice`, so the gateway still preempts them)
    runtime_threads: int = Field(0, ge=0)
    # clips per forward pass (and segments per decoded chunk); None: by the runtime (`batch_size_for`):
    # OpenVINO on the CPU spends the same time per clip at batch 1 as at 16 (benchmarks/results/encoder-runtime.json),
    # so a small batch costs no throughput and bounds how long a query waits for the ingest batch in the model;
    # torch (CUDA, or the eager reference on the CPU) keeps the larger batch
    batch_size: int | None = Field(None, ge=1)
    max_wait_ms: float = Field(10.0, ge=0)  # how long a partial batch waits for more clips
    decode_threads: int = Field(2, ge=1)  # decoding runs ahead of the forward pass in this pool
    prefetch: int = Field(4, ge=1)  # ingest jobs a worker holds at once (decoding, embedding or committing)
    decode_ahead_clips: int = Field(64, ge=1)  # decoded clips waiting for the model, at most (bounds memory)
    # torch's intra-op threads (the torch runtime's forward pass; under OpenVINO torch's own ops: preprocessing,
    # the text encoder); 0: automatic, which in the embedded service is all cores but one (the gateway keeps a
    # core's worth of responsiveness whatever the worker does), and torch's default in a standalone worker
    torch_threads: int = Field(0, ge=0)
    # embedded service: while a query (classify, search) is in flight, ingest work waits between its steps
    # (decoding a chunk, a forward pass, a commit), at most this long without a break (service/priority.py)
    ingest_yield_max_s: float = Field(2.0, ge=0)
    # the worker's threads (decode, forward pass, commit; the model's own threads too) run this much lower
    # in CPU priority than the gateway's (Linux nice; 0: the same), so that a search or a text query takes
    # the core it needs from an ingest or a reindex under way (service/priority.py)
    worker_nice: int = Field(10, ge=0, le=19)
    segment_fps: float = Field(1.0, gt=0)  # retrieval protocol: 1 frame per second, model-length clips
    inference_timeout_s: float = Field(60.0, gt=0)  # classify / query embedding: 503 after this
    text_search: bool = True  # load the MiniLM text encoder (needed for text queries)

    # search
    aggregation: Literal["max", "chamfer"] = "max"
    # near-duplicate robustness (docs/api.md#views): embed the picture inside constant-colour borders
    # (at ingest and for queries; changing it needs a re-ingest), and embed query videos in these extra views
    remove_borders: bool = True
    picture: Literal["rgb", "grey"] = "rgb"  # "grey": embed a normalised grey view (media.views.grey_normalised)
    query_views: list[Literal["mirrored", "inner"]] = Field(default_factory=lambda: ["mirrored", "inner"])
    # a query video's windows start every this many seconds (indexed videos: back to back, 8 s every 8 s), so
    # that a copied excerpt is aligned with an indexed segment to half of it and its span edges are located
    # to half of it (docs/api.md#copies); at most the window length. A query that would have more than
    # max_segments windows at this stride is embedded back to back
    query_stride_s: float = Field(4.0, gt=0)
    # text search: score = w_head * head + w_concept * concept + w_meta * max(0, meta - floor) (docs/api.md)
    text_weight_head: float = 1.0
    text_weight_concept: float = 1.0
    text_weight_meta: float = 0.5
    text_concept_temperature: float = Field(0.05, gt=0)  # softmax temperature over the concept bank
    text_meta_floor: float = Field(0.3, ge=-1, le=1)  # metadata cosines below this add nothing
    text_candidates: int = Field(200, ge=1)  # videos re-scored per text query
    stored_labels: int = Field(64, ge=1)  # class probabilities stored per video at ingest (the top this many)

    # the vector index (docs/indexer.md): FAISS inside this process, or Milvus (a Milvus Lite file, a
    # `milvus-lite server`, or a cluster at http://host:19530; only the URI changes)
    index: Literal["faiss", "milvus"] = "faiss"
    milvus_uri: str | None = None  # None: the Milvus Lite file data_dir/milvus.db
    milvus_token: SecretStr | None = None  # `user:password` or an API key, for a secured cluster
    milvus_index_type: Literal["HNSW", "IVF_FLAT"] = "HNSW"  # Lite builds only these (others: a silent scan)
    # one Milvus flush per index write (a job's rows): keeps filtered queries and searches off unflushed rows;
    # false for a cluster that rate-limits flushes (indexer/milvus_index.py)
    milvus_flush_writes: bool = True

    # scale-out (docs/architecture.md): set redis_url and run `drca serve --redis` + `drca worker --redis`
    redis_url: str | None = None  # e.g. redis://127.0.0.1:6379/0; None: the embedded service
    redis_prefix: str = "drca"  # every key and stream this deployment uses starts with `<prefix>:`
    replica_index_dir: Path | None = None  # Redis mode: this replica's copy of the index (default data_dir/index)
    # Redis mode with index=milvus: entries of the `<prefix>:changes` stream kept (approximately); a gateway
    # that falls further behind rebuilds its text-search table from the store
    change_stream_maxlen: int = Field(100_000, ge=1000)
    reclaim_idle_s: float = Field(30.0, gt=0)  # a job held this long by a silent worker is taken over
    max_attempts: int = Field(3, ge=1)  # deliveries of one job before it goes to the dead-letter stream
    worker_heartbeat_s: float = Field(2.0, gt=0)  # a worker counts as gone after 3 missed heartbeats
    rate_limit_per_s: float = Field(0.0, ge=0)  # token bucket per API key (or client address); 0: off
    rate_limit_burst: int = Field(20, ge=1)  # bucket size
    # wrong API keys per client address: `burst` in a row, then one more per 1/rate s (429 until then)
    auth_fail_limit_per_s: float = Field(0.1, ge=0)  # 0: off
    auth_fail_limit_burst: int = Field(20, ge=1)

    @field_validator("api_keys_file", "admin_keys_file")
    @classmethod
    def _key_file_readable(cls, path: Path | None) -> Path | None:
        if path is not None:
            read_key_file(path)  # a clear error naming the setting, now rather than at the first request
        return path

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.api_keys_file is not None:
            self.api_keys = [*self.api_keys, *(SecretStr(k) for k in read_key_file(self.api_keys_file))]
        if any(not k.get_secret_value() for k in self.api_keys):
            raise ValueError("api_keys must not contain empty keys")
        if self.admin_keys_file is not None:
            self.admin_keys = [*self.admin_keys, *(SecretStr(k) for k in read_key_file(self.admin_keys_file))]
        if any(not k.get_secret_value() for k in self.admin_keys):
            raise ValueError("admin_keys must not contain empty keys")
        if {k.get_secret_value() for k in self.admin_keys} & {k.get_secret_value() for k in self.api_keys}:
            raise ValueError("an admin key is also an API key: the admin keys must differ from every API key")
        if self.index == "milvus" and self.redis_url and not self.milvus_uri:
            raise ValueError("index=milvus with redis_url (scale-out) needs milvus_uri: a Milvus server "
                             "(http://host:19530) that every gateway and worker reaches")
        if self.index == "milvus" and self.redis_url and not self.milvus_uri.startswith(("http://", "https://")):
            raise ValueError(f"index=milvus with redis_url needs a Milvus server URI (http://host:19530), not "
                             f"{self.milvus_uri!r}: a Milvus Lite file is held by one process")
        return self

    def batch_size_for(self, runtime: Literal["torch", "openvino"]) -> int:
        """Clips per forward pass with this runtime: `batch_size` when set, else the runtime's default."""
        if self.batch_size is not None:
            return self.batch_size
        return DEFAULT_BATCH_SIZE_OPENVINO if runtime == "openvino" else DEFAULT_BATCH_SIZE_TORCH

    # derived paths -------------------------------------------------------------------------------
    @property
    def videos_dir(self) -> Path:
        return self.data_dir / "videos"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    @property
    def concepts_dir(self) -> Path:  # the concept bank's phrase embeddings, once per checkpoint
        return self.data_dir / "concepts"

    @property
    def thumbnails_dir(self) -> Path:
        return self.data_dir / "thumbnails"

    @property
    def runtime_cache_path(self) -> Path:  # the OpenVINO runtime's compiled models, per checkpoint
        return self.runtime_cache_dir or self.data_dir / "cache" / "openvino"

    @property
    def index_dir(self) -> Path:
        return self.replica_index_dir or self.data_dir / "index"

    @property
    def milvus_location(self) -> str:
        return self.milvus_uri or str(self.data_dir / "milvus.db")

    @property
    def store_path(self) -> Path:
        return self.data_dir / "metadata.sqlite3"

    @property
    def effective_allowed_hosts(self) -> list[str]:
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        try:
            loopback = ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            loopback = self.host.lower() == "localhost"
        return ["127.0.0.1", "localhost", "::1"] if loopback else ["*"]

    # derived limits ------------------------------------------------------------------------------
    @property
    def video_limits(self) -> VideoLimits:
        """The decoder limits of every video this service opens (uploads, queries, thumbnails)."""
        return VideoLimits(
            max_pixels=self.max_pixels,
            max_duration_s=self.max_duration_s,
            max_file_bytes=self.max_upload_bytes,
        )
