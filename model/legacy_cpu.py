"""The pre-parity modules of the shipped `drca-cpu` checkpoint (model/checkpoints/drca-cpu), kept only so
that checkpoint keeps loading until it is retrained on the reference modules.

Selected by `backbone.legacy_cpu = true`, which only that checkpoint's config.json sets. Nothing else may
use these: they differ from the reference DRCA (see docs/model.md, "Parity with the reference code").
Delete this file, `BackboneConfig.legacy_cpu` and the two `if cfg.legacy_cpu` branches (model/dccm.py,
model/drca.py) once the shipped checkpoint is replaced.

Differences from the reference modules of model/dccm.py and model/layers.py:
- sal_ref: queries are projected before a per-channel strided 3x3 pool, keys and values are layer-normed
  and projected with bias, no query residual, and a 2x2 average-pool skip path (LayerNorm eps 1e-6);
- ScoreNet: its strided 3x3 conv pads by 1;
- Resolution-Align: the temporal residual is upsampled nearest, not bilinearly.
"""

from __future__ import annotations

from torch import Tensor, nn

from model.dccm import ScoreNet
from model.layers import Mlp, ResolutionAlignBlock, attention, pool2x


class LegacySaliencyReference(nn.Module):
    def __init__(self, dim: int, num_heads: int, use_sdpa: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.use_sdpa = use_sdpa
        self.norm_q = nn.LayerNorm(dim, eps=1e-6)
        self.norm_kv = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.q_pool = nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1, groups=dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        b, t, h, w, c = x.shape
        heads, hd = self.num_heads, c // self.num_heads
        q = self.q(self.norm_q(x)).reshape(b * t, h, w, c).permute(0, 3, 1, 2)
        q = self.q_pool(q).flatten(2).transpose(1, 2)  # (B*T', hw/4, C)
        q = q.reshape(b, t * (h // 2) * (w // 2), heads, hd).transpose(1, 2)
        kv = self.kv(self.norm_kv(ref.reshape(b, -1, c))).reshape(b, -1, 2, heads, hd).permute(2, 0, 3, 1, 4)
        out = attention(q, kv[0], kv[1], self.use_sdpa).transpose(1, 2).reshape(b, t, h // 2, w // 2, c)
        out = pool2x(x) + self.proj(out)
        return out + self.mlp(self.norm_mlp(out))


class LegacyScoreNet(ScoreNet):
    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.conv = nn.Conv3d(dim, dim, kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))


class LegacyResolutionAlignBlock(ResolutionAlignBlock):
    @staticmethod
    def upsample(x: Tensor) -> Tensor:
        return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
