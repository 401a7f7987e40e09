"""The encoder: one checkpoint loaded once; decode a video into segment clips; one forward pass gives
segment embeddings and class probabilities; the text side (MiniLM + the checkpoint's text head).

Decoding uses the one shared path (`media.segments`: `media.video`, `sampling.fixed_segments`,
`media.views`, `transforms.preprocess`), so serving sees exactly what training and evaluation saw; the
worker decodes a chunk of segments at a time (`VideoEncoder.open`, `OpenedVideo.clips`). Every video is
embedded from its active picture (constant-colour borders removed, both at ingest and for queries); a
query video is embedded in extra views as well (`query_views`: its mirror image, and the inner picture of
a picture-in-picture when one is found). Retrieval protocol:
`segment_fps` frames per second (default 1), clips of the model's `num_frames`, one embedding per clip;
a video shorter than one clip still gives one segment spread over the whole video.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from indexer import Span
from media.sampling import Segment
from media.segments import DecodeTimes, FrameCarry, ViewPlan, decode_segments, plan_segments, plan_views
from media.transforms import decode_short_side
from media.video import VideoReader, open_video, reopen_video
from model.checkpoint import CheckpointFiles, load_checkpoint_files, read_checkpoint
from service.encoding.inference import open_runner
from service.encoding.plan import VideoPlan, check_segment_count
from service.errors import TEXT_SEARCH_OFF, TextSearchDisabled
from service.settings import Settings

log = logging.getLogger(__name__)

#: decord's threads per open video: the worker decodes `decode_threads` videos at once, each on one thread
#: (the thread split: docs/api.md#threads)
DECODER_THREADS = 1


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


class OpenedVideo:
    """A validated video, its planned segments and views. Its rows are every segment in every view of
    the plan, segment-major (one row per segment for an indexed video); `clips(a, b)` decodes rows
    a..b-1 only, so the worker holds one chunk of a long video at a time. Not thread-safe (one decoder).
    `times`: the seconds spent so far decoding, preprocessing and on the views (opening it included)."""

    def __init__(self, reader: VideoReader, planned: list[Segment], plan: ViewPlan, query: bool,
                 probed: list[torch.Tensor] | None = None, times: DecodeTimes | None = None,
                 carry: FrameCarry | None = None) -> None:
        self._reader, self._planned, self._plan = reader, planned, plan
        self.times = times or DecodeTimes()
        # overlapping segments (a query's windows): the last decoded one's frames, so that the next window
        # decodes only its new frames; back-to-back segments hold no frames beyond their own chunk
        overlapping = any(int(b.indices.min()) <= int(a.indices.max()) for a, b in pairwise(planned))
        self._carry = (carry or FrameCarry()) if overlapping else None
        # frames plan_views decoded for the probe, by segment: used once, so nothing is decoded twice
        self._probed: dict[int, torch.Tensor] = dict(enumerate(probed or []))
        n_views = len(plan.views)
        self.segments = [Span(s.start_s, max(s.start_s, s.end_s)) for s in planned for _ in range(n_views)]
        self.views: list[str] | None = [v for _ in planned for v in plan.views] if query else None
        # in the video's own pixels, also when the decoder scaled its frames down (`decode_short_side`)
        size = plan.video_size or plan.frame_size
        boxes = {v: b.as_list() for v, b in plan.video_boxes().items() if not b.is_full(*size)}
        self.boxes: dict[str, list[int]] | None = boxes or None
        self.duration = reader.info.duration

    def clips(self, start: int, stop: int) -> torch.Tensor:
        """(stop - start, C, T, H, W) preprocessed clips of rows start..stop-1."""
        n_views = len(self._plan.views)
        first, last = start // n_views, (stop - 1) // n_views + 1
        # a chunk that ends inside the last segment's views leaves the rest of them to the next chunk
        keep_last = stop % n_views != 0
        parts = [self._segment_rows(i, keep=keep_last and i == last - 1) for i in range(first, last)]
        t0 = time.perf_counter()
        rows = torch.cat(parts)[start - first * n_views : stop - first * n_views]
        self.times.preprocess += time.perf_counter() - t0
        return rows

    def _segment_rows(self, i: int, keep: bool) -> torch.Tensor:
        """Segment i in every view: from the probe's frames (used up unless `keep`), else decoded."""
        frames = self._probed.get(i) if keep else self._probed.pop(i, None)
        if frames is None:
            return decode_segments(self._reader, self._planned[i : i + 1], self._plan, self.times, self._carry)
        clips = self._plan.clips(frames, self.times)
        t0 = time.perf_counter()
        out = torch.stack(clips)
        self.times.preprocess += time.perf_counter() - t0
        return out

    def close(self) -> None:
        self._reader.close()


class VideoEncoder:
    """`checkpoint`: the checkpoint already read with its weights (`read_checkpoint`; the service reads it
    once and hands it down); None: `settings.checkpoint` is read here."""

    def __init__(self, settings: Settings, checkpoint: CheckpointFiles | None = None) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        files = checkpoint or read_checkpoint(settings.checkpoint)
        ckpt = load_checkpoint_files(files, map_location=self.device)
        self.model = ckpt.model.eval()
        self.config = ckpt.config
        self.runner = open_runner(settings, self.model, self.config, self.device, files.sha256)
        self.batch_size = settings.batch_size_for(self.runner.name)  # clips per forward pass
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
            "encoder ready: %s on %s (%s), %d classes, %d-d embeddings, text head %s",
            self.config.name, self.device, self.runner.name, len(self.class_names), self.embed_dim,
            "yes" if self.text_head is not None else "no",
        )

    # decoding (thread-safe: every call opens its own reader) -------------------------------------
    def open(self, path: str | Path, query: bool = False, plan: VideoPlan | None = None) -> OpenedVideo:
        """Probe, open and plan the segments, then the views (only the frames that find borders and the
        inner picture are decoded). With the upload's `plan` (made by the route for this clip length), the
        file is opened on it: neither probed nor planned again. Raises `VideoError` for bad input,
        `VideoTooLong` past `max_segments`. A query video (`query=True`) is also embedded in the
        `query_views` (mirror image, inner picture)."""
        views = ("original", *self.settings.query_views) if query else ("original",)
        num_frames = self.config.input.num_frames
        planned_here = plan is None or not plan.fits(num_frames, self.settings.segment_fps)
        times = DecodeTimes()
        t0 = time.perf_counter()
        short = decode_short_side(self.config.input.img_size)  # 4K frames are decoded scaled down
        reader = (open_video(path, self.limits, num_threads=DECODER_THREADS, max_short_side=short) if planned_here
                  else reopen_video(path, plan.probe, self.limits, num_threads=DECODER_THREADS,
                                    max_short_side=short))
        try:
            if planned_here:
                planned = plan_segments(reader, num_frames, self.settings.segment_fps)
                check_segment_count(len(planned), self.settings, Path(path).stat().st_size)
                if query:
                    planned = self._query_windows(reader, planned)
            else:
                planned = list(plan.segments)
            times.open += time.perf_counter() - t0
            carry = FrameCarry()
            view_plan, probed = plan_views(reader, planned, self.config.input,
                                           remove_borders=self.settings.remove_borders, views=views,
                                           picture=self.settings.picture, times=times, carry=carry)
        except BaseException:
            reader.close()
            raise
        return OpenedVideo(reader, planned, view_plan, query, probed, times, carry)

    def _query_windows(self, reader: VideoReader, planned: list[Segment]) -> list[Segment]:
        """A query's windows every `query_stride_s` (overlapping), unless that would be more than
        `max_segments` of them: then the back-to-back segments `planned` (the cost bound of one query)."""
        s = self.settings
        window = self.config.input.num_frames / s.segment_fps
        if s.query_stride_s >= window:
            return planned
        dense = plan_segments(reader, self.config.input.num_frames, s.segment_fps, stride_s=s.query_stride_s)
        return dense if len(dense) <= s.max_segments else planned

    def decode(self, path: str | Path, query: bool = False) -> DecodedVideo:
        """Every clip at once (benchmarks, short videos); the worker decodes in chunks (`open`)."""
        video = self.open(path, query)
        try:
            return DecodedVideo(video.clips(0, len(video.segments)), video.segments, video.duration,
                                views=video.views, boxes=video.boxes)
        finally:
            video.close()

    def describe(self) -> dict[str, str]:
        """What runs the forward pass, for the metrics (`drca_encoder_info`) and the benchmarks."""
        runtime = self.runner.name
        return {"runtime": runtime, "device": self.device.type, "model": self.config.name,
                "precision": self.settings.runtime_precision if runtime == "openvino" else "f32",
                "encoder_threads": str(self.runner.threads), "torch_threads": str(torch.get_num_threads()),
                "torch_interop_threads": str(torch.get_num_interop_threads()),
                "decoder_threads_per_video": str(DECODER_THREADS)}

    # the model ---------------------------------------------------------------------------------
    def forward(self, clips: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """clips (N, C, T, H, W) -> embeddings (N, E) float32 L2-normalised, class probs (N, C) | None."""
        out = self.runner(clips)
        probs = torch.softmax(torch.from_numpy(out.logits), dim=-1).numpy() if out.logits is not None else None
        return out.embedding, probs

    @torch.inference_mode()
    def embed_text(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """texts -> MiniLM sentence embeddings (N, 384) and text-head projections (N, E) | None."""
        if self.text_encoder is None:
            raise TextSearchDisabled(TEXT_SEARCH_OFF)
        sent = self.text_encoder.encode(list(texts))
        proj = None
        if self.text_head is not None:
            proj = self.text_head(sent.to(self.device)).float().cpu().numpy()
        return sent.numpy(), proj
