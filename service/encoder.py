"""The encoder: one checkpoint loaded once; decode a video into segment clips; one forward pass gives
segment embeddings and class probabilities; the text side (MiniLM + the checkpoint's text head).

Decoding uses the one shared path (`media.views.view_clips`: `media.video`, `sampling.fixed_segments`,
`transforms.preprocess`), so serving sees exactly what training and
evaluation saw. Every video is embedded from its active picture (constant-colour borders removed, both at
ingest and for queries); a query video is embedded in extra views as well (`query_views`: its mirror
image, and the inner picture of a picture-in-picture when one is found). Retrieval protocol:
`segment_fps` frames per second (default 1), clips of the model's `num_frames`, one embedding per clip;
a video shorter than one clip still gives one segment spread over the whole video.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from indexer import Span
from media.segments import view_clips
from media.video import open_video
from model.checkpoint import load_checkpoint
from service.settings import Settings

log = logging.getLogger(__name__)


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is available")
    return torch.device(setting)


@dataclass
class DecodedVideo:
    clips: torch.Tensor  # (N, C, T, H, W) float, normalised: one clip per segment and view
    segments: list[Span]  # per clip
    duration: float
    views: list[str] | None = None  # per clip (query videos); None: every clip is the "original" view
    boxes: dict[str, list[int]] | None = None  # view -> [x, y, w, h] of the frame it shows, when not all of it


class VideoEncoder:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        ckpt = load_checkpoint(settings.checkpoint, map_location=self.device)
        self.model = ckpt.model.eval()
        self.config = ckpt.config
        self.card = ckpt.card
        self.text_head = ckpt.text_head
        self.class_names: list[str] = list(ckpt.card.class_names)
        self.embed_dim = ckpt.config.head.embed_dim
        if not self.embed_dim:
            raise RuntimeError(f"{settings.checkpoint}: the checkpoint has no embedding head (head.embed_dim=0)")
        self.limits = settings.video_limits
        self.text_encoder = None
        if settings.text_search:
            from model.text import TextEncoder

            self.text_encoder = TextEncoder(device=str(self.device))
        log.info(
            "encoder ready: %s on %s, %d classes, %d-d embeddings, text head %s",
            self.config.name, self.device, len(self.class_names), self.embed_dim,
            "yes" if self.text_head is not None else "no",
        )

    # decoding (thread-safe: every call opens its own reader) -------------------------------------
    def decode(self, path: str | Path, query: bool = False) -> DecodedVideo:
        """Segment clips of the video's active picture (borders removed when `remove_borders`); a query
        video (`query=True`) also in the `query_views` (mirror image, inner picture)."""
        views = ("original", *self.settings.query_views) if query else ("original",)
        with open_video(path, self.limits) as reader:
            vc = view_clips(reader, self.config.input, self.settings.segment_fps,
                            remove_borders=self.settings.remove_borders, views=views,
                            picture=self.settings.picture)
            duration = reader.info.duration
        boxes = {v: b.as_list() for v, b in vc.boxes.items() if not b.is_full(*vc.frame_size)}
        return DecodedVideo(vc.clips, [Span(s.start_s, max(s.start_s, s.end_s)) for s in vc.segments], duration,
                            views=list(vc.views) if query else None, boxes=boxes or None)

    # the model ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, clips: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """clips (N, C, T, H, W) -> embeddings (N, E) float32 L2-normalised, class probs (N, C) | None."""
        out = self.model(clips.to(self.device, non_blocking=True))
        emb = out.embedding.float().cpu().numpy()
        probs = torch.softmax(out.logits.float(), dim=-1).cpu().numpy() if out.logits is not None else None
        return emb, probs

    @torch.inference_mode()
    def embed_text(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """texts -> MiniLM sentence embeddings (N, 384) and text-head projections (N, E) | None."""
        if self.text_encoder is None:
            raise RuntimeError("text search is disabled (text_search=false)")
        sent = self.text_encoder.encode(list(texts))
        proj = None
        if self.text_head is not None:
            proj = self.text_head(sent.to(self.device)).float().cpu().numpy()
        return sent.numpy(), proj
