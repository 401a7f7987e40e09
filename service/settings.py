"""Service settings: one pydantic-settings class, every default in one place.

Values come from (highest first) keyword arguments, `DRCA_*` environment variables, the settings file
named by `DRCA_SETTINGS_FILE` (a `.env`-style file of `DRCA_*` lines), then the defaults below.
List values (`DRCA_API_KEYS`) are JSON: `DRCA_API_KEYS='["key-one", "key-two"]'`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from media.video import VideoLimits
from model.checkpoint import SHIPPED_CHECKPOINT


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
    max_k: int = Field(100, ge=1)
    max_page: int = Field(1000, ge=1)

    # security: when non-empty, every /v1 call needs `Authorization: Bearer <one of these>`
    api_keys: list[SecretStr] = Field(default_factory=list)

    # encoder worker
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(16, ge=1)  # clips per forward pass
    max_wait_ms: float = Field(10.0, ge=0)  # how long a partial batch waits for more clips
    decode_threads: int = Field(2, ge=1)  # decoding runs ahead of the forward pass in this pool
    prefetch: int = Field(4, ge=1)  # decoded videos waiting for the model, at most
    torch_threads: int = Field(0, ge=0)  # 0: torch's default
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
    # text search: score = w_head * head + w_class * class + w_meta * meta (docs/api.md)
    text_weight_head: float = 1.0
    text_weight_class: float = 0.5
    text_weight_meta: float = 0.5
    text_candidates: int = Field(200, ge=1)  # videos re-scored per text query

    # scale-out (docs/architecture.md): set redis_url and run `drca serve --redis` + `drca worker --redis`
    redis_url: str | None = None  # e.g. redis://127.0.0.1:6379/0; None: the embedded service
    redis_prefix: str = "drca"  # every key and stream this deployment uses starts with `<prefix>:`
    replica_index_dir: Path | None = None  # Redis mode: this replica's copy of the index (default data_dir/index)
    reclaim_idle_s: float = Field(30.0, gt=0)  # a job held this long by a silent worker is taken over
    max_attempts: int = Field(3, ge=1)  # deliveries of one job before it goes to the dead-letter stream
    worker_heartbeat_s: float = Field(2.0, gt=0)  # a worker counts as gone after 3 missed heartbeats
    rate_limit_per_s: float = Field(0.0, ge=0)  # token bucket per API key (or client address); 0: off
    rate_limit_burst: int = Field(20, ge=1)  # bucket size

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if any(not k.get_secret_value() for k in self.api_keys):
            raise ValueError("api_keys must not contain empty keys")
        return self

    # derived paths -------------------------------------------------------------------------------
    @property
    def videos_dir(self) -> Path:
        return self.data_dir / "videos"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    @property
    def thumbnails_dir(self) -> Path:
        return self.data_dir / "thumbnails"

    @property
    def index_dir(self) -> Path:
        return self.replica_index_dir or self.data_dir / "index"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "metadata.sqlite3"

    # derived limits ------------------------------------------------------------------------------
    @property
    def video_limits(self) -> VideoLimits:
        """The decoder limits of every video this service opens (uploads, queries, thumbnails)."""
        return VideoLimits(
            max_pixels=self.max_pixels,
            max_duration_s=self.max_duration_s,
            max_file_bytes=self.max_upload_bytes,
        )
