"""Transformer building blocks: patch embedding, attention, MLP, and the two DRCA layer kinds.

Token layouts (B = batch, T = frames, H x W = patch grid, C = channels):
- full resolution stage:  cls (B, 1, C), tokens (B, T, H, W, C)
- resolution-align stage: cls (B, 1, C), high (B, K, H, W, C), low (B, T-K, H/2, W/2, C), or None when
  K = T (no compressed frames)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """Per-frame non-overlapping patches: (B, C, T, H, W) -> (B, T, H/p, W/p, D)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        x = self.proj(x.transpose(1, 2).reshape(b * t, c, h, w))  # (B*T, D, H', W')
        return x.permute(0, 2, 3, 1).reshape(b, t, x.shape[2], x.shape[3], x.shape[1])


class ConvStem(nn.Module):
    """Per-frame convolutional stem: log2(p) stride-2 3x3 conv + BN + ReLU stages (channels doubling up to
    ``embed_dim``), then a 1x1 projection: (B, C, T, H, W) -> (B, T, H/p, W/p, D), like `PatchEmbed`."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        stages = patch_size.bit_length() - 1
        widths = [max(16, embed_dim >> (stages - 1 - i)) for i in range(stages)]
        layers: list[nn.Module] = []
        c = in_chans
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        layers.append(nn.Conv2d(c, embed_dim, 1))
        self.proj = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        x = self.proj(x.transpose(1, 2).reshape(b * t, c, h, w))  # (B*T, D, H', W')
        return x.permute(0, 2, 3, 1).reshape(b, t, x.shape[2], x.shape[3], x.shape[1])


class DropPath(nn.Module):
    """Stochastic depth: each sample along dim 0 keeps its residual update with probability 1 - p (scaled by
    1 / (1 - p)) or drops it. `shared` applies one mask per sample to several tensors of the same batch."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def _mask(self, batch: int, like: Tensor) -> Tensor | None:
        if not self.training or self.p == 0.0:
            return None
        keep = 1.0 - self.p
        return like.new_empty(batch).bernoulli_(keep).div_(keep)

    def forward(self, x: Tensor) -> Tensor:
        return self.shared(x)[0]

    def shared(self, *xs: Tensor) -> tuple[Tensor, ...]:
        mask = self._mask(xs[0].shape[0], xs[0])
        if mask is None:
            return xs
        return tuple(x * mask.reshape((-1,) + (1,) * (x.ndim - 1)) for x in xs)


def attention(q: Tensor, k: Tensor, v: Tensor, use_sdpa: bool) -> Tensor:
    """softmax(q k^T / sqrt(d)) v over (..., heads, tokens, head_dim)."""
    if use_sdpa:
        return F.scaled_dot_product_attention(q, k, v)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return scores.softmax(dim=-1) @ v


class Attention(nn.Module):
    """Multi-head self-attention over (N, L, C)."""

    def __init__(self, dim: int, num_heads: int, use_sdpa: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.use_sdpa = use_sdpa
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, length, c = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = attention(qkv[0], qkv[1], qkv[2], self.use_sdpa)  # (N, heads, L, head_dim)
        return self.proj(out.transpose(1, 2).reshape(n, length, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class TemporalAttention(nn.Module):
    """Pre-norm attention across frames at each spatial location, followed by TimeSformer's temporal fc.

    Stochastic depth sits between the attention and the temporal fc, with one mask per (clip, spatial
    location), as in the reference (mmaction2's DividedTemporalAttentionWithNorm)."""

    def __init__(self, dim: int, num_heads: int, use_sdpa: bool, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, use_sdpa)
        self.drop_path = DropPath(drop_path)
        self.temporal_fc = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, H, W, C) -> residual update of the same shape."""
        b, t, h, w, c = x.shape
        seq = x.permute(0, 2, 3, 1, 4).reshape(b * h * w, t, c)
        out = self.temporal_fc(self.drop_path(self.attn(self.norm(seq))))
        return out.reshape(b, h, w, t, c).permute(0, 3, 1, 2, 4)


class SpatialAttention(nn.Module):
    """Pre-norm attention within each frame over [cls, patches]; the per-frame cls outputs are returned.
    Stochastic depth has one mask per (clip, frame), the cls output of that frame included."""

    def __init__(self, dim: int, num_heads: int, use_sdpa: bool, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, use_sdpa)
        self.drop_path = DropPath(drop_path)

    def forward(self, cls: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """cls: (B, 1, C), x: (B, T, H, W, C) -> (cls update per frame (B, T, C), patch update like x)."""
        b, t, h, w, c = x.shape
        seq = torch.cat([cls.expand(b, t, c).reshape(b * t, 1, c), x.reshape(b * t, h * w, c)], dim=1)
        out = self.drop_path(self.attn(self.norm(seq)))
        return out[:, 0].reshape(b, t, c), out[:, 1:].reshape(b, t, h, w, c)


class DividedSTBlock(nn.Module):
    """TimeSformer divided space-time layer: temporal attention, spatial attention, FFN (all pre-norm).
    The cls token skips the temporal attention; the FFN's stochastic depth is one mask per clip."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float, dropout: float,
                 use_sdpa: bool) -> None:
        super().__init__()
        self.temporal = TemporalAttention(dim, num_heads, use_sdpa, drop_path)
        self.spatial = SpatialAttention(dim, num_heads, use_sdpa, drop_path)
        self.norm_ffn = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = Mlp(dim, int(dim * mlp_ratio), dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, cls: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x + self.temporal(x)
        cls_upd, x_upd = self.spatial(cls, x)
        cls = cls + cls_upd.mean(dim=1, keepdim=True)
        x = x + x_upd
        cls_ffn, x_ffn = self.drop_path.shared(self.ffn(self.norm_ffn(cls)), self.ffn(self.norm_ffn(x)))
        return cls + cls_ffn, x + x_ffn


class ResolutionAlignBlock(nn.Module):
    """DRCA layer after compression: K full-resolution saliency frames and T-K half-resolution frames.

    Temporal attention runs over all T frames on the low-resolution grid: the saliency frames are
    average-pooled 2x (adaptively to the low grid when the full grid is odd), concatenated with the compressed frames, attended across time, and their residual
    is upsampled bilinearly (align_corners=True, as the reference's UpsamplingBilinear2d) back to full
    resolution. Spatial attention runs per resolution with its own norm and weights for the
    low-resolution path; the cls token takes the mean of its per-frame outputs over all T frames. The
    FFN is shared by both resolutions (one stochastic-depth mask per clip over every token).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float, dropout: float,
                 use_sdpa: bool) -> None:
        super().__init__()
        self.temporal = TemporalAttention(dim, num_heads, use_sdpa, drop_path)
        self.spatial_high = SpatialAttention(dim, num_heads, use_sdpa, drop_path)
        self.spatial_low = SpatialAttention(dim, num_heads, use_sdpa, drop_path)
        self.norm_ffn = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = Mlp(dim, int(dim * mlp_ratio), dropout)
        self.drop_path = DropPath(drop_path)

    @staticmethod
    def upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
        """Bilinear upsampling with align_corners=True (the reference's UpsamplingBilinear2d; 2x for an
        even grid): (B, T, h, w, C) -> (B, T, *size, C)."""
        b, t, h, w, c = x.shape
        up = F.interpolate(x.reshape(b * t, h, w, c).permute(0, 3, 1, 2), size=size, mode="bilinear",
                           align_corners=True)
        return up.permute(0, 2, 3, 1).reshape(b, t, *size, c)

    def forward(self, cls: Tensor, high: Tensor, low: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """low None: no compressed frames (K = T); the layer then runs on the saliency frames alone (what it
        computes with an empty `low`, without the zero-size tensors that an exported graph cannot hold)."""
        if low is None:
            return self._saliency_only(cls, high)
        k = high.shape[1]
        aligned = torch.cat([pool_to(high, low.shape[2:4]), low], dim=1)  # (B, T, H/2, W/2, C)
        upd = self.temporal(aligned)
        high = high + self.upsample(upd[:, :k], high.shape[2:4])
        low = low + upd[:, k:]

        cls_high, high_upd = self.spatial_high(cls, high)
        cls_low, low_upd = self.spatial_low(cls, low)
        cls = cls + torch.cat([cls_high, cls_low], dim=1).mean(dim=1, keepdim=True)
        high = high + high_upd
        low = low + low_upd

        cls_ffn, high_ffn, low_ffn = self.drop_path.shared(
            self.ffn(self.norm_ffn(cls)), self.ffn(self.norm_ffn(high)), self.ffn(self.norm_ffn(low))
        )
        return cls + cls_ffn, high + high_ffn, low + low_ffn

    def _saliency_only(self, cls: Tensor, high: Tensor) -> tuple[Tensor, Tensor, None]:
        """`forward` without compressed frames: temporal attention over the saliency frames pooled to the
        half grid (the size the compression would give), no low-resolution spatial attention."""
        h, w = high.shape[2:4]
        high = high + self.upsample(self.temporal(pool_to(high, ((h + 1) // 2, (w + 1) // 2))), (h, w))
        cls_high, high_upd = self.spatial_high(cls, high)
        cls = cls + cls_high.mean(dim=1, keepdim=True)
        high = high + high_upd
        cls_ffn, high_ffn = self.drop_path.shared(self.ffn(self.norm_ffn(cls)), self.ffn(self.norm_ffn(high)))
        return cls + cls_ffn, high + high_ffn, None


def pool_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Average pooling of (B, T, H, W, C) down to (B, T, *size, C): 2x2 blocks when size is (H/2, W/2),
    else adaptive windows (an odd grid: 7x7 -> 4x4)."""
    b, t, h, w, c = x.shape
    if (h, w) == (2 * size[0], 2 * size[1]):
        return x.reshape(b, t, size[0], 2, size[1], 2, c).mean(dim=(3, 5))
    out = F.adaptive_avg_pool2d(x.reshape(b * t, h, w, c).permute(0, 3, 1, 2), size)
    return out.permute(0, 2, 3, 1).reshape(b, t, *size, c)


def init_transformer(embeddings: tuple[nn.Parameter, ...], blocks: list[nn.Module]) -> None:
    """The reference's initialisation of the embeddings (truncated normal, std 0.02) and of the divided
    space-time and Resolution-Align layers: q/k/v Xavier-uniform with zero attention biases (as
    nn.MultiheadAttention), the rest nn.Linear's defaults, and a zero `temporal_fc` (each layer starts
    spatial-only, as TimeSformer)."""
    for p in embeddings:
        nn.init.trunc_normal_(p, std=0.02)
    for blk in blocks:
        for m in blk.modules():
            if isinstance(m, Attention):
                nn.init.xavier_uniform_(m.qkv.weight)
                nn.init.zeros_(m.qkv.bias)
                nn.init.zeros_(m.proj.bias)
        nn.init.zeros_(blk.temporal.temporal_fc.weight)
        nn.init.zeros_(blk.temporal.temporal_fc.bias)
