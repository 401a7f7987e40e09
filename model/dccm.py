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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import BackboneConfig
from model.layers import Mlp, attention, pool2x


class ScoreNet(nn.Module):
    """Scores each frame in [0, 1] (min-max normalised over the T frames of a clip).

    A strided 3x3 conv summarises each frame's patch grid, per-frame average and max pooling give a
    local descriptor, an MLP splits it into a local half and a half that is averaged over all frames
    (global context), and a final MLP maps [local, global] to a scalar. The input is detached: the
    ScoreNet learns only through the perturbed top-k gradient, as in the paper.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(dim, dim, kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
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
    rejected) frame, selections sorted by frame index. Backward uses
    d E[y] / d s = E[y(s + sigma Z) Z^T] / sigma, estimated with the same samples.
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
        # Jacobian of each indicator entry w.r.t. the scores: (B, K, T, T_in) contracted with the output grad.
        jac_top = torch.einsum("bskt,bsd->bktd", onehot_top, noise) / (num_samples * ctx.sigma)
        jac_rest = torch.einsum("bskt,bsd->bktd", onehot_rest, noise) / (num_samples * ctx.sigma)
        grad = torch.einsum("bkt,bktd->bd", grad_top, jac_top) + torch.einsum("bkt,bktd->bd", grad_rest, jac_rest)
        return grad, None, None, None


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
    """x: (B, T, H, W, C), idx: (B, K) -> (B, K, H, W, C)."""
    return x[torch.arange(x.shape[0], device=x.device).unsqueeze(1), idx]


def mix_frames(x: Tensor, weights: Tensor) -> Tensor:
    """Soft gather: weights (B, K, T) times x (B, T, H, W, C) -> (B, K, H, W, C)."""
    return torch.einsum("bkt,bthwc->bkhwc", weights, x)


# --------------------------------------------------------------------------- compression modules
# Each maps the non-saliency frames (B, T', H, W, C) to (B, T', H/2, W/2, C); `ref` is the saliency
# frames (B, K, H, W, C), used only by SaliencyReference.


class SaliencyReference(nn.Module):
    """`sal_ref`: reference attention. Queries come from the non-saliency frames, pooled 2x with a strided
    depthwise 3x3 conv; keys and values come from the tokens of all K saliency frames. The pooled frames
    are the residual path, followed by an MLP."""

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


class Conv2dCompression(nn.Module):
    """`conv2d`: per frame, a strided 3x3 conv and a 3x3 conv, each with batch norm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(dim, dim, 3, stride=2, padding=1), nn.BatchNorm2d(dim),
            nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim),
        )

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        b, t, h, w, c = x.shape
        out = self.net(x.reshape(b * t, h, w, c).permute(0, 3, 1, 2))
        return out.permute(0, 2, 3, 1).reshape(b, t, h // 2, w // 2, c)


class Conv3dCompression(nn.Module):
    """`conv3d`: a 3x3x3 conv, stride (1, 2, 2), expanding to 2C, then a 1x1x1 conv back to C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(dim, 2 * dim, 3, stride=(1, 2, 2), padding=1, bias=False), nn.BatchNorm3d(2 * dim),
            nn.Conv3d(2 * dim, dim, 1, bias=False), nn.BatchNorm3d(dim),
        )

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        return self.net(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)


class PatchMergeCompression(nn.Module):
    """`patch_merge`: a temporal 3x1x1 conv mixes neighbouring frames, then each 2x2 block of patches is
    concatenated (4C), layer-normed and projected back to C (Swin's patch merging)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.temporal = nn.Sequential(nn.Conv3d(dim, dim, (3, 1, 1), padding=(1, 0, 0), bias=False),
                                      nn.BatchNorm3d(dim))
        self.norm = nn.LayerNorm(4 * dim)
        self.reduce = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        x = x + self.temporal(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        merged = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], -1)
        return self.reduce(self.norm(merged))


class ResBlock2dCompression(nn.Module):
    """`resblock_2d`: a per-frame bottleneck residual block (1x1, strided 3x3, 1x1) with a strided 1x1
    projection shortcut."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        width = dim // 2
        self.body = nn.Sequential(
            nn.Conv2d(dim, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, dim, 1, bias=False), nn.BatchNorm2d(dim),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(dim, dim, 1, stride=2, bias=False), nn.BatchNorm2d(dim))

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        b, t, h, w, c = x.shape
        x2 = x.reshape(b * t, h, w, c).permute(0, 3, 1, 2)
        out = F.relu(self.body(x2) + self.shortcut(x2))
        return out.permute(0, 2, 3, 1).reshape(b, t, h // 2, w // 2, c)


class ResBlock3dCompression(nn.Module):
    """`resblock_3d`: the bottleneck block with a 3x3x3 middle conv of stride (1, 2, 2)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        width = dim // 2
        self.body = nn.Sequential(
            nn.Conv3d(dim, width, 1, bias=False), nn.BatchNorm3d(width), nn.ReLU(inplace=True),
            nn.Conv3d(width, width, 3, stride=(1, 2, 2), padding=1, bias=False), nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
            nn.Conv3d(width, dim, 1, bias=False), nn.BatchNorm3d(dim),
        )
        self.shortcut = nn.Sequential(nn.Conv3d(dim, dim, 1, stride=(1, 2, 2), bias=False), nn.BatchNorm3d(dim))

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        x3 = x.permute(0, 4, 1, 2, 3)
        return F.relu(self.body(x3) + self.shortcut(x3)).permute(0, 2, 3, 4, 1)


def build_compression(cfg: BackboneConfig) -> nn.Module:
    dim = cfg.embed_dim
    modules = {
        "sal_ref": lambda: SaliencyReference(dim, cfg.sal_ref_heads, cfg.use_sdpa),
        "conv2d": lambda: Conv2dCompression(dim),
        "conv3d": lambda: Conv3dCompression(dim),
        "patch_merge": lambda: PatchMergeCompression(dim),
        "resblock_2d": lambda: ResBlock2dCompression(dim),
        "resblock_3d": lambda: ResBlock3dCompression(dim),
    }
    return modules[cfg.comp_module]()


class DCCM(nn.Module):
    """Splits (B, T, H, W, C) into K saliency frames at full resolution and T-K compressed frames."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.k = cfg.num_saliency
        self.frame_choice = cfg.frame_choice
        self.sigma = cfg.sigma
        self.num_samples = cfg.num_samples
        self.score_net = ScoreNet(cfg.embed_dim) if cfg.frame_choice != "uniform" else None
        self.compression = build_compression(cfg)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Returns (high (B, K, H, W, C), low (B, T-K, H/2, W/2, C), saliency indices (B, K), scores)."""
        b, t = x.shape[:2]
        if self.score_net is None:
            top, rest = uniform_split(t, self.k, b, x.device)
            scores = None
            high, back = gather_frames(x, top), gather_frames(x, rest)
        else:
            scores = self.score_net(x)
            top, rest = hard_split(scores, self.k)
            if self.training and self.frame_choice == "diff_rank":
                w_top, w_rest = PerturbedTopK.apply(scores, self.k, self.num_samples, self.sigma)
                high, back = mix_frames(x, w_top), mix_frames(x, w_rest)
            else:
                high, back = gather_frames(x, top), gather_frames(x, rest)
        return high, self.compression(back, high), top, scores
