"""DRCA on a pretrained EfficientNet-Lite0 stem (a "hybrid" DRCA, as timm's hybrid ViT).

The stem is `model.efficientnet.EfficientNetLite0`, split at a block boundary (``backbone.stem_split``):

1. **Full resolution, all T frames.** The stem's early blocks run on every frame (stride 8 at the default
   split); a ``patch_size / stride`` convolution turns their map into DRCA tokens on the stride-32 grid
   (7x7 at 224 px), with cls, position and time embeddings, and ``comp_insert_layer`` divided space-time
   layers attend over them.
2. **DCCM.** The ScoreNet scores the frames from those tokens; the perturbed top-k keeps K of them. The
   stem's late blocks then run on the K saliency frames' full-size maps (7x7 out) and on the other T-K
   frames' maps average-pooled to half size (4x4 out): most of the stem's work is skipped for T-K frames.
   The compression module (sal_ref: the non-saliency tokens attend to the saliency tokens) halves the
   tokens of the T-K frames.
3. **Resolution-Align.** Each frame's late map is projected into its tokens (high: K x 7x7, low: T-K x
   4x4) and the Resolution-Align layers attend across time over both resolutions.
4. **Heads.** The feature is the mean of the stem's pooled 1280-d feature over the K saliency frames
   (the frames the stem saw at full size) plus a projection of the normalised mean DRCA token, in which
   every frame, both resolutions, has a say. The classifier is the stem's ImageNet classifier on that
   feature; the embedding is the L2-normalised feature (or, with ``head.reduction``, its learned reduction,
   `model.reduction`). (Averaging the half-size frames' pooled features
   in as well cost most of the labels: a frozen ImageNet CNN at half size is a different classifier;
   docs/training.md has the measurement.)

At initialisation the projection back to 1280 is zero, so the class output is the mean of the stem's own
logits over the saliency frames (over all frames when K = T: exactly the teacher's frame average) and the
embedding the stem's mean feature over them: training can only add to what ImageNet gives.

Training never runs the stem (it is frozen): `forward_stem` takes the stem's outputs for every frame at
both sizes (computed once, `stem_outputs`), which is what a feature cache stores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import DRCAConfig
from model.dccm import DCCM, FrameSplit
from model.drca import DRCAOutput
from model.efficientnet import EfficientNetLite0
from model.efficientnet_spec import FEATURE_DIM, LATE_CHANNELS, block_channels, block_stride
from model.layers import DividedSTBlock, ResolutionAlignBlock, init_transformer
from model.reduction import Reduction


@dataclass
class StemOutputs:
    """The frozen stem's outputs for the T frames of B clips, every frame at both sizes (the training
    cache; at inference only what the DCCM's choice needs is computed).

    early: (B, T, C, h, w) the early blocks' map; late_full / late_half: (B, T, 320, g, g) the late
    blocks' maps of the full-size and half-size early map; pooled_full: (B, T, 1280) the head's global
    average of the full-size late map."""

    early: Tensor
    late_full: Tensor
    pooled_full: Tensor
    late_half: Tensor


def halve(early: Tensor) -> Tensor:
    """2x2 average pooling of early maps ``(N, C, h, w)`` (ceil for an odd size): the compressed input."""
    return F.avg_pool2d(early, 2, ceil_mode=True)


class HybridDRCA(nn.Module):
    def __init__(self, cfg: DRCAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        b, inp = cfg.backbone, cfg.input
        dim = b.embed_dim
        self.split = b.stem_split
        self.stem = EfficientNetLite0().to(memory_format=torch.channels_last)  # ~2x faster convs on CPU
        k = b.patch_size // block_stride(self.split)
        self.tokenizer = nn.Conv2d(block_channels(self.split), dim, kernel_size=k, stride=k)
        grid = inp.img_size // b.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.time_embed = nn.Parameter(torch.zeros(1, inp.num_frames, dim))
        drop = [b.drop_path * i / max(1, b.depth - 1) for i in range(b.depth)]
        args = dict(dim=dim, num_heads=b.num_heads, mlp_ratio=b.mlp_ratio, dropout=b.dropout, use_sdpa=b.use_sdpa)
        insert = b.comp_insert_layer
        self.blocks = nn.ModuleList(DividedSTBlock(drop_path=drop[i], **args) for i in range(insert))
        self.dccm = DCCM(b)
        self.late_proj = nn.Linear(LATE_CHANNELS, dim)
        self.align_blocks = nn.ModuleList(ResolutionAlignBlock(drop_path=drop[i], **args)
                                          for i in range(insert, b.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.out_proj = nn.Linear(dim, FEATURE_DIM)
        h = cfg.head
        self.reduction = Reduction(FEATURE_DIM, h.embed_dim) if h.reduction != "none" and h.embed_dim else None
        self._init_weights()

    def _init_weights(self) -> None:
        """As `DRCA._init_weights` for the transformer layers; the output projection zero (the network
        starts as the stem's frame mean). The stem's weights come from a checkpoint or the teacher."""
        init_transformer((self.pos_embed, self.cls_token, self.time_embed), [*self.blocks, *self.align_blocks])
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed", "time_embed"}

    def train(self, mode: bool = True) -> HybridDRCA:
        """The stem stays in eval mode (frozen batch-norm statistics) whatever the mode."""
        super().train(mode)
        self.stem.eval()
        return self

    # ------------------------------------------------------------------------------------------ the stem
    def _frames(self, x: Tensor) -> Tensor:
        inp = self.cfg.input
        if x.ndim != 5 or x.shape[1] != 3 or x.shape[2] != inp.num_frames or x.shape[3:] != (inp.img_size,) * 2:
            raise ValueError(
                f"expected input (B, 3, {inp.num_frames}, {inp.img_size}, {inp.img_size}), got {tuple(x.shape)}"
            )
        return x.transpose(1, 2).flatten(0, 1).contiguous(memory_format=torch.channels_last)  # (B*T, 3, H, W)

    def _pooled(self, late: Tensor) -> Tensor:
        """(N, 320, g, g) late maps -> the stem's pooled features (N, 1280)."""
        return self.stem.head(late).mean(dim=(2, 3))

    def stem_outputs(self, x: Tensor) -> StemOutputs:
        """Every frame through the stem at both sizes (the training cache; x: (B, 3, T, H, W))."""
        b, t = x.shape[0], x.shape[2]
        early = self.stem.early(self._frames(x), self.split)
        late_full = self.stem.late(early, self.split)
        late_half = self.stem.late(halve(early), self.split)
        per_clip = lambda y: y.reshape(b, t, *y.shape[1:])  # noqa: E731
        return StemOutputs(per_clip(early), per_clip(late_full), per_clip(self._pooled(late_full)),
                           per_clip(late_half))

    # ---------------------------------------------------------------------------------------- the DRCA
    def forward(self, x: Tensor) -> DRCAOutput:
        """x: (B, 3, T, H, W) normalised frames. At inference the late blocks run only where needed: on
        the K saliency frames at full size and on the T-K others at half size."""
        if self.training:
            return self.forward_stem(self.stem_outputs(x))
        b, t = x.shape[0], x.shape[2]
        early = self.stem.early(self._frames(x), self.split)
        early = early.reshape(b, t, *early.shape[1:])
        cls, tokens = self._full_resolution(early)
        split = self.dccm.select(tokens)
        k = split.top.shape[1]
        high_late = self.stem.late(split.take_top(early).flatten(0, 1), self.split)
        low_late = None
        if k < t:  # static sizes: with K = T the traced graph has no compressed branch
            low_late = self.stem.late(halve(split.take_rest(early).flatten(0, 1)), self.split)
            low_late = low_late.unflatten(0, (b, t - k))
        return self._after_dccm(cls, tokens, split, high_late.unflatten(0, (b, k)),
                                self._pooled(high_late).unflatten(0, (b, k)), low_late)

    def forward_stem(self, s: StemOutputs) -> DRCAOutput:
        """The network from the stem's outputs for every frame at both sizes (training on a cache; in
        training mode the perturbed top-k mixes them softly, in eval mode it picks)."""
        cls, tokens = self._full_resolution(s.early)
        split = self.dccm.select(tokens)
        low_late = split.take_rest(s.late_half) if split.top.shape[1] < tokens.shape[1] else None
        return self._after_dccm(cls, tokens, split, split.take_top(s.late_full), split.take_top(s.pooled_full),
                                low_late)

    def _full_resolution(self, early: Tensor) -> tuple[Tensor, Tensor]:
        """early (B, T, C, h, w) -> cls (B, 1, D) and tokens (B, T, g, g, D) after the first layers."""
        b, t = early.shape[:2]
        tokens = self.tokenizer(early.flatten(0, 1))  # (B*T, D, g, g)
        g, d = tokens.shape[-1], tokens.shape[1]
        tokens = tokens.permute(0, 2, 3, 1).reshape(b, t, g, g, d)
        tokens = tokens + self.pos_embed[:, 1:].reshape(1, 1, g, g, d) + self.time_embed.reshape(1, t, 1, 1, d)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, 1, d)
        for blk in self.blocks:
            cls, tokens = blk(cls, tokens)
        return cls, tokens

    def _after_dccm(self, cls: Tensor, tokens: Tensor, split: FrameSplit, high_late: Tensor, high_pooled: Tensor,
                    low_late: Tensor | None) -> DRCAOutput:
        """high_late (B, K, 320, g, g), high_pooled (B, K, 1280), low_late (B, T-K, 320, g', g') -> the output.
        low_late None: K = T, no compressed frames, so no compression and no low-resolution tokens (the
        network computes what it would with empty ones, and the exported graph holds no zero-size tensor)."""
        saliency = split.take_top(tokens)
        high, low = saliency + self.late_proj(high_late.permute(0, 1, 3, 4, 2)), None
        if low_late is not None:
            low = self.dccm.compression(split.take_rest(tokens), saliency)
            low = low + self.late_proj(low_late.permute(0, 1, 3, 4, 2))
        for blk in self.align_blocks:
            cls, high, low = blk(cls, high, low)
        frame_means = high.mean(dim=(2, 3))
        if low is not None:
            frame_means = torch.cat([frame_means, low.mean(dim=(2, 3))], dim=1)
        mean_token = frame_means.mean(dim=1)
        stem_feature = high_pooled.mean(dim=1)  # (B, 1280): the saliency frames, seen at full size
        features = stem_feature + self.out_proj(self.norm(mean_token))
        logits = self.stem._fc(features) if self.cfg.head.num_classes else None
        embedding = F.normalize(features, dim=-1) if self.cfg.head.embed_dim else None
        if self.reduction is not None:
            embedding = self.reduction(embedding)
        return DRCAOutput(features=features, logits=logits, embedding=embedding, saliency_indices=split.top)
