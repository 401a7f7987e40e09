"""Differentiable Context-aware Compression Module (DCCM).

At the insert layer the DCCM scores the T frames with a ScoreNet, keeps the top-K "saliency" frames at
full resolution and compresses the other T-K frames to half resolution.

Frame choice:
- `diff_rank`: perturbed top-k (Berthet et al., "Learning with differentiable perturbed optimizers"):
  in training, frames are gathered with the Monte-Carlo mean of one-hot top-k indicators under Gaussian
  noise, and the ScoreNet receives the perturbed-optimizer gradient estimate; in eval, a hard top-k.
- `wo_diff_rank`: the ScoreNet ranks, but a hard top-k is used in training too (no gradient to it).
- `uniform`: K evenly spaced frames, no ScoreNet.
Selected frames are always kept in temporal order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import BackboneConfig
from model.layers import Mlp, attention


class ScoreNet(nn.Module):
    """Scores each frame in [0, 1] (min-max normalised over the T frames of a clip).

    A strided 3x3 conv without padding (a 14x14 grid becomes 6x6, as in the reference) summarises each
    frame's patch grid, per-frame average and max pooling give a
    local descriptor, an MLP splits it into a local half and a half that is averaged over all frames
    (global context), and a final MLP maps [local, global] to a scalar. The input is detached: the
    ScoreNet learns only through the perturbed top-k gradient, as in the paper.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(dim, dim, kernel_size=(1, 3, 3), stride=(1, 2, 2))
        self.bn = nn.BatchNorm3d(dim)
        self.embed = nn.Sequential(nn.LayerNorm(2 * dim), nn.Linear(2 * dim, 2 * dim), nn.GELU())
        self.head = nn.Sequential(
            nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, H, W, C) -> scores (B, T)."""
        x = x.detach().permute(0, 4, 1, 2, 3)  # (B, C, T, H, W)
        x = self.bn(self.conv(x)).flatten(3)  # (B, C, T, HW/4)
        desc = torch.cat([x.mean(dim=3), x.amax(dim=3)], dim=1).transpose(1, 2)  # (B, T, 2C)
        desc = self.embed(desc)
        local, glob = desc.chunk(2, dim=-1)
        desc = torch.cat([local, glob.mean(dim=1, keepdim=True).expand_as(glob)], dim=-1)
        scores = self.head(desc).squeeze(-1)
        lo = scores.amin(dim=1, keepdim=True)
        hi = scores.amax(dim=1, keepdim=True)
        return (scores - lo) / (hi - lo + 1e-5)


class PerturbedTopK(torch.autograd.Function):
    """Soft top-k indicators: E[one_hot(topk(s + sigma * Z))], Z ~ N(0, I), with its perturbed gradient.

    Forward returns (B, K, T) and (B, T-K, T): row j is the distribution of the j-th selected (resp.
    rejected) frame, selections sorted by frame index.

    Backward is the reference's estimator: of the Jacobian d E[y_kt] / d s_d = E[y_kt Z_d] / sigma it
    keeps only the diagonal d = t (score t receives the gradient of the indicator entries of frame t),
    estimated with the forward's samples, and divides the result by 10 (a constant of the reference,
    which scales the ScoreNet's effective learning rate).
    """

    @staticmethod
    def forward(ctx, scores: Tensor, k: int, num_samples: int, sigma: float) -> tuple[Tensor, Tensor]:
        b, t = scores.shape
        noise = torch.randn(b, num_samples, t, device=scores.device, dtype=scores.dtype)
        perturbed = scores.unsqueeze(1) + sigma * noise  # (B, S, T)
        order = perturbed.argsort(dim=-1, descending=True)
        top = order[..., :k].sort(dim=-1).values
        rest = order[..., k:].sort(dim=-1).values
        onehot_top = F.one_hot(top, t).to(scores.dtype)  # (B, S, K, T)
        onehot_rest = F.one_hot(rest, t).to(scores.dtype)  # (B, S, T-K, T)
        ctx.save_for_backward(onehot_top, onehot_rest, noise)
        ctx.sigma = sigma
        return onehot_top.mean(dim=1), onehot_rest.mean(dim=1)

    @staticmethod
    def backward(ctx, grad_top: Tensor, grad_rest: Tensor) -> tuple[Tensor | None, None, None, None]:
        onehot_top, onehot_rest, noise = ctx.saved_tensors
        num_samples = noise.shape[1]
        # E[y_kt Z_t] for every indicator entry (B, K, T), contracted with the output grad over K.
        diag_top = torch.einsum("bskt,bst->bkt", onehot_top, noise)
        diag_rest = torch.einsum("bskt,bst->bkt", onehot_rest, noise)
        grad = (grad_top * diag_top).sum(1) + (grad_rest * diag_rest).sum(1)
        return grad / (num_samples * ctx.sigma * REFERENCE_GRAD_SCALE), None, None, None


# The reference divides the perturbed top-k gradient by this constant.
REFERENCE_GRAD_SCALE = 10.0


def hard_split(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Indices (B, K) of the top-k scores and (B, T-K) of the rest, each sorted by frame index."""
    order = scores.argsort(dim=-1, descending=True, stable=True)
    return order[:, :k].sort(dim=-1).values, order[:, k:].sort(dim=-1).values


def uniform_split(t: int, k: int, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """K evenly spaced frames (floor(i * T / K)) and the rest."""
    top = [i * t // k for i in range(k)]
    rest = [i for i in range(t) if i not in top]
    as_tensor = lambda idx: torch.tensor(idx, device=device).unsqueeze(0).expand(batch, -1)  # noqa: E731
    return as_tensor(top), as_tensor(rest)


def gather_frames(x: Tensor, idx: Tensor) -> Tensor:
    """x: (B, T, ...), idx: (B, K) -> (B, K, ...)."""
    return x[torch.arange(x.shape[0], device=x.device).unsqueeze(1), idx]


# --------------------------------------------------------------------------- compression modules
# Each maps the non-saliency frames (B, T', H, W, C) to (B, T', H/2, W/2, C); `ref` is the saliency
# frames (B, K, H, W, C), used only by SaliencyReference. Each has the reference's semantics
# (models/modules/compression_modules.py and reference_compress.py of dun-research/DRCA).


class SaliencyReference(nn.Module):
    """`sal_ref`: the non-saliency frames attend to the saliency frames, at half resolution.

    Queries: the layer-normed non-saliency tokens, split into heads, pooled per head by one depthwise
    3x3 stride-2 conv over the head_dim channels (shared by the heads), layer-normed over head_dim, then
    projected. Keys and values: bias-free projections of the raw tokens of all K saliency frames (no
    norm). The attention output keeps a residual of its own queries, then a projection; the skip path is
    a 3x3 stride-2 max pool of the input; an MLP block follows. LayerNorms use eps 1e-5 (nn.LayerNorm's
    default), as in the reference.
    """

    def __init__(self, dim: int, num_heads: int, use_sdpa: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.use_sdpa = use_sdpa
        head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.q_pool = nn.Conv2d(head_dim, head_dim, 3, stride=2, padding=1, groups=head_dim, bias=False)
        self.q_norm = nn.LayerNorm(head_dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        b, t, h, w, c = x.shape
        heads, hd = self.num_heads, c // self.num_heads
        q = self.norm(x).reshape(b * t, h, w, heads, hd).permute(0, 3, 4, 1, 2).reshape(b * t * heads, hd, h, w)
        q = self.q_pool(q)
        h2, w2 = q.shape[-2:]
        q = self.q_norm(q.reshape(b * t, heads, hd, h2 * w2).transpose(2, 3))  # (B*T', heads, hw/4, hd)
        q = self.q(q.transpose(1, 2).reshape(b * t, h2 * w2, c))
        q = q.reshape(b, t * h2 * w2, heads, hd).transpose(1, 2)  # (B, heads, T'*hw/4, hd)
        ref = ref.reshape(b, -1, c)
        k = self.k(ref).reshape(b, -1, heads, hd).transpose(1, 2)
        v = self.v(ref).reshape(b, -1, heads, hd).transpose(1, 2)
        out = attention(q, k, v, self.use_sdpa) + q
        out = self.proj(out.transpose(1, 2).reshape(b, t, h2, w2, c))
        skip = F.max_pool2d(x.reshape(b * t, h, w, c).permute(0, 3, 1, 2), 3, stride=2, padding=1)
        out = skip.permute(0, 2, 3, 1).reshape(b, t, h2, w2, c) + out
        return out + self.mlp(self.norm_mlp(out))


def _per_frame(net: nn.Module, x: Tensor) -> Tensor:
    """Apply a 2D conv net to every frame: (B, T, H, W, C) -> (B, T, H', W', C')."""
    b, t, h, w, c = x.shape
    out = net(x.reshape(b * t, h, w, c).permute(0, 3, 1, 2))
    return out.permute(0, 2, 3, 1).reshape(b, t, *out.shape[2:], out.shape[1])


def _clipwise(net: nn.Module, x: Tensor) -> Tensor:
    """Apply a 3D conv net to each clip: (B, T, H, W, C) -> (B, T', H', W', C')."""
    return net(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)


class Conv2dCompression(nn.Module):
    """`conv2d`: per frame, a strided 3x3 conv and a 3x3 conv, each with batch norm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(dim, dim, 3, stride=2, padding=1), nn.BatchNorm2d(dim),
            nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim),
        )

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        return _per_frame(self.net, x)


class Conv3dCompression(nn.Module):
    """`conv3d`: a 3x3x3 conv, stride (1, 2, 2), expanding to 2C, then a 1x1x1 conv back to C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(dim, 2 * dim, 3, stride=(1, 2, 2), padding=1, bias=False), nn.BatchNorm3d(2 * dim),
            nn.Conv3d(2 * dim, dim, 1, bias=False), nn.BatchNorm3d(dim),
        )

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        return _clipwise(self.net, x)


class PatchMergeCompression(nn.Module):
    """`patch_merge`: 1x1x1, 3x1x1 (mixing neighbouring frames) and 1x1x1 convs, each with batch norm and
    no residual, then each 2x2 block of patches concatenated (4C), layer-normed and projected back to C
    (Swin's patch merging). The grid is even (config validation), so no padding is needed; the
    reference's padding branch mixes up the time and height axes and fails when T-K is odd."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.temporal = nn.Sequential(
            nn.Conv3d(dim, dim, 1, bias=False), nn.BatchNorm3d(dim),
            nn.Conv3d(dim, dim, (3, 1, 1), padding=(1, 0, 0), bias=False), nn.BatchNorm3d(dim),
            nn.Conv3d(dim, dim, 1, bias=False), nn.BatchNorm3d(dim),
        )
        self.norm = nn.LayerNorm(4 * dim)
        self.reduce = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        x = _clipwise(self.temporal, x)
        merged = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], -1)
        return self.reduce(self.norm(merged))


class ResBlock2dCompression(nn.Module):
    """`resblock_2d`: a per-frame bottleneck residual block of width 2C (1x1, strided 3x3, 1x1 convs with
    batch norm) with a strided 1x1 projection shortcut. The reference cannot build this module (its
    shortcut names an undefined norm layer); this is the block it describes, with BatchNorm2d."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        width = 2 * dim
        self.body = nn.Sequential(
            nn.Conv2d(dim, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, dim, 1, bias=False), nn.BatchNorm2d(dim),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(dim, dim, 1, stride=2, bias=False), nn.BatchNorm2d(dim))

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        return F.relu(_per_frame(self.body, x) + _per_frame(self.shortcut, x))


class ResBlock3dCompression(nn.Module):
    """`resblock_3d`: a bottleneck block of width 2C (1x1x1, 3x3x3 of stride (1, 2, 2), 1x1x1 convs with
    batch norm) with a 3x3x3 stride-(1, 2, 2) conv shortcut."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        width = 2 * dim
        self.body = nn.Sequential(
            nn.Conv3d(dim, width, 1, bias=False), nn.BatchNorm3d(width), nn.ReLU(inplace=True),
            nn.Conv3d(width, width, 3, stride=(1, 2, 2), padding=1, bias=False), nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
            nn.Conv3d(width, dim, 1, bias=False), nn.BatchNorm3d(dim),
        )
        self.shortcut = nn.Sequential(nn.Conv3d(dim, dim, 3, stride=(1, 2, 2), padding=1, bias=False),
                                      nn.BatchNorm3d(dim))

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        return F.relu(_clipwise(self.body, x) + _clipwise(self.shortcut, x))


def score_net(cfg: BackboneConfig) -> ScoreNet:
    return ScoreNet(cfg.embed_dim)


def build_compression(cfg: BackboneConfig) -> nn.Module:
    dim = cfg.embed_dim
    if cfg.comp_module == "sal_ref":
        return SaliencyReference(dim, cfg.sal_ref_heads, cfg.use_sdpa)
    modules = {
        "conv2d": Conv2dCompression,
        "conv3d": Conv3dCompression,
        "patch_merge": PatchMergeCompression,
        "resblock_2d": ResBlock2dCompression,
        "resblock_3d": ResBlock3dCompression,
    }
    return modules[cfg.comp_module](dim)


def reference_init(m: nn.Module) -> None:
    """The reference's initialisation of everything in its DCCM (ScoreNet and compression module; use
    with `module.apply`): Xavier-normal conv and linear weights, N(0, 1) conv biases, zero linear biases,
    BatchNorm2d weights N(1, 0.02) (its BatchNorm3d layers keep PyTorch's defaults), LayerNorm 1 and 0."""
    if isinstance(m, (nn.Conv2d, nn.Conv3d)):
        nn.init.xavier_normal_(m.weight)
        if m.bias is not None:
            nn.init.normal_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.xavier_normal_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, mean=1.0, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class DCCM(nn.Module):
    """Splits (B, T, H, W, C) into K saliency frames at full resolution and T-K compressed frames."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.k = cfg.num_saliency
        self.frame_choice = cfg.frame_choice
        self.sigma = cfg.sigma
        self.num_samples = cfg.num_samples
        self.score_net = score_net(cfg) if cfg.frame_choice != "uniform" else None
        self.compression = build_compression(cfg)
        self.apply(reference_init)

    def select(self, x: Tensor) -> FrameSplit:
        """Which frames stay at full resolution: x (B, T, H, W, C) -> a `FrameSplit`."""
        b, t = x.shape[:2]
        if self.score_net is None:
            top, rest = uniform_split(t, self.k, b, x.device)
            return FrameSplit(top, rest)
        scores = self.score_net(x)
        top, rest = hard_split(scores, self.k)
        if self.training and self.frame_choice == "diff_rank":
            w_top, w_rest = PerturbedTopK.apply(scores, self.k, self.num_samples, self.sigma)
            return FrameSplit(top, rest, w_top, w_rest, scores)
        return FrameSplit(top, rest, scores=scores)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Returns (high (B, K, H, W, C), low (B, T-K, H/2, W/2, C), saliency indices (B, K), scores)."""
        split = self.select(x)
        high = split.take_top(x)
        return high, self.compression(split.take_rest(x), high), split.top, split.scores


@dataclass
class FrameSplit:
    """The DCCM's choice: frame indices (B, K) kept at full resolution and (B, T-K) compressed, each in
    temporal order; in training with `diff_rank`, the perturbed top-k's soft indicators (B, K, T) and
    (B, T-K, T), which then replace the hard gathers."""

    top: Tensor
    rest: Tensor
    w_top: Tensor | None = None
    w_rest: Tensor | None = None
    scores: Tensor | None = None

    def take_top(self, x: Tensor) -> Tensor:
        """x: (B, T, ...) -> the saliency frames (B, K, ...)."""
        return _take(x, self.top, self.w_top)

    def take_rest(self, x: Tensor) -> Tensor:
        """x: (B, T, ...) -> the compressed frames (B, T-K, ...)."""
        return _take(x, self.rest, self.w_rest)


def _take(x: Tensor, idx: Tensor, weights: Tensor | None) -> Tensor:
    if weights is None:
        return gather_frames(x, idx)
    return torch.einsum("bkt,bt...->bk...", weights, x)
