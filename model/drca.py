"""The DRCA network: a divided space-time TimeSformer with a DCCM and Resolution-Align layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import DRCAConfig
from model.dccm import DCCM
from model.layers import ConvStem, DividedSTBlock, PatchEmbed, ResolutionAlignBlock, init_transformer
from model.reduction import Reduction


@dataclass
class DRCAOutput:
    features: Tensor  # (B, D): the final norm of the pooled token (the cls token, or the mean token)
    logits: Tensor | None  # (B, num_classes)
    embedding: Tensor | None  # (B, E), L2-normalised
    saliency_indices: Tensor | None  # (B, K): frames kept at full resolution, None without compression


class DRCA(nn.Module):
    def __init__(self, cfg: DRCAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        b, inp, head = cfg.backbone, cfg.input, cfg.head
        grid = inp.img_size // b.patch_size
        dim = b.embed_dim
        stem = ConvStem if b.stem == "conv" else PatchEmbed
        self.patch_embed = stem(b.patch_size, 3, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))  # [cls, patches] per frame
        self.time_embed = nn.Parameter(torch.zeros(1, inp.num_frames, dim))
        self.pos_drop = nn.Dropout(b.dropout)

        insert = b.comp_insert_layer if b.comp_insert_layer >= 0 else b.depth
        drop = [b.drop_path * i / max(1, b.depth - 1) for i in range(b.depth)]  # linspace(0, drop_path, depth)
        args = dict(dim=dim, num_heads=b.num_heads, mlp_ratio=b.mlp_ratio, dropout=b.dropout, use_sdpa=b.use_sdpa)
        self.blocks = nn.ModuleList(DividedSTBlock(drop_path=drop[i], **args) for i in range(insert))
        self.dccm = DCCM(b) if b.comp_insert_layer >= 0 else None
        self.align_blocks = nn.ModuleList(ResolutionAlignBlock(drop_path=drop[i], **args) for i in range(insert, b.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head_drop = nn.Dropout(head.dropout)
        self.cls_head = nn.Linear(dim, head.num_classes) if head.num_classes > 0 else None
        self.embed_head = nn.Linear(dim, head.embed_dim) if head.embed_dim and head.embedding == "linear" else None
        self.reduction = Reduction(dim, head.embed_dim) if head.reduction != "none" and head.embed_dim else None
        self._init_weights()

    def _init_weights(self) -> None:
        """The reference's initialisation (dun-research/DRCA on mmaction2 0.24): the cls token, position and
        time embeddings truncated-normal (std 0.02); the linear patch embedding LeCun-normal (Kaiming normal,
        fan-in, linear gain) with zero bias; the transformer layers as nn.MultiheadAttention and nn.Linear
        initialise themselves (q/k/v Xavier-uniform, zero attention biases), `temporal_fc` zero (each layer
        starts spatial-only, as TimeSformer); the DCCM as `model.dccm.reference_init`; the classifier
        truncated-normal (std 0.02), zero bias. Our embedding projection is initialised like the classifier;
        the conv stem keeps PyTorch's defaults."""
        init_transformer((self.pos_embed, self.cls_token, self.time_embed), [])
        if isinstance(self.patch_embed, PatchEmbed):
            nn.init.kaiming_normal_(self.patch_embed.proj.weight, mode="fan_in", nonlinearity="linear")
            nn.init.zeros_(self.patch_embed.proj.bias)
        init_transformer((), [*self.blocks, *self.align_blocks])
        for head in (self.cls_head, self.embed_head):
            if head is not None:
                nn.init.trunc_normal_(head.weight, std=0.02)
                nn.init.zeros_(head.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names the paper's solver excludes from weight decay."""
        return {"cls_token", "pos_embed", "time_embed"}

    def forward(self, x: Tensor) -> DRCAOutput:
        """x: (B, 3, T, H, W) normalised frames."""
        inp = self.cfg.input
        if x.ndim != 5 or x.shape[1] != 3 or x.shape[2] != inp.num_frames or x.shape[3:] != (inp.img_size,) * 2:
            raise ValueError(
                f"expected input (B, 3, {inp.num_frames}, {inp.img_size}, {inp.img_size}), got {tuple(x.shape)}"
            )
        cls, tokens = self._full_resolution(x)
        saliency = None
        if self.dccm is not None:
            high, low, saliency, _ = self.dccm(tokens)
            for blk in self.align_blocks:
                cls, high, low = blk(cls, high, low)

        if self.cfg.head.pool == "cls":
            pooled_tokens = cls[:, 0]
        elif self.dccm is not None:  # every frame's mean token, both resolutions, averaged over frames
            pooled_tokens = torch.cat([high.mean(dim=(2, 3)), low.mean(dim=(2, 3))], dim=1).mean(dim=1)
        else:
            pooled_tokens = tokens.mean(dim=(1, 2, 3))
        features = self.norm(pooled_tokens)
        pooled = self.head_drop(features)
        logits = self.cls_head(pooled) if self.cls_head is not None else None
        embedding = None
        if self.embed_head is not None:
            embedding = F.normalize(self.embed_head(pooled), dim=-1)
        elif self.cfg.head.embed_dim:  # head.embedding == "feature"
            embedding = F.normalize(features, dim=-1)
            if self.reduction is not None:
                embedding = self.reduction(embedding)
        return DRCAOutput(features=features, logits=logits, embedding=embedding, saliency_indices=saliency)

    def _full_resolution(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Embedding and the layers before the DCCM: returns cls (B, 1, D) and tokens (B, T, H', W', D)."""
        tokens = self.patch_embed(x)
        b, t, h, w, d = tokens.shape
        tokens = tokens + self.pos_embed[:, 1:].reshape(1, 1, h, w, d) + self.time_embed.reshape(1, t, 1, 1, d)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, 1, d)
        tokens, cls = self.pos_drop(tokens), self.pos_drop(cls)
        for blk in self.blocks:
            cls, tokens = blk(cls, tokens)
        return cls, tokens
