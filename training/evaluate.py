"""`drca eval`: classification accuracy and retrieval mAP for a checkpoint.

Classification: one test clip a video (``uniform_sample`` in test mode, the CPU recipe's sampler) or the
seed's mmaction ``SampleFrames(num_frames, frame_interval, num_clips, test_mode=True)`` with the clips'
softmax averaged; top-1, top-5 and mean class accuracy.

Retrieval (DRCA / 3D-CSL protocol): every video is embedded with the service's segment path
(`media.segments.segment_clips`: 1 frame per second, 8-frame clips, one L2-normalised embedding per
clip); video similarity is Chamfer (mean over query clips of the max cosine over database clips); AP per
query over the database list, the query itself excluded. FIVR sets are scored under DSVR, CSVR and ISVR.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from media.sampling import SampleFrames
from media.segments import segment_clips
from media.video import has_video_extension, open_video
from model.checkpoint import load_checkpoint
from training.data.annotations import load_video_list
from training.data.datasets import DecodedClipDataset
from training.data.retrieval_sets import Protocol, load_fivr, load_near_duplicate, relevant_ids
from training.embed import embed_clips
from training.metrics import chamfer_matrix, classification_metrics, retrieval_metrics

log = logging.getLogger(__name__)

@torch.inference_mode()
def predict(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Softmax scores (N, C), averaged over the clips of each video, and labels (N,)."""
    scores, labels = [], []
    for x, y in loader:
        x = x.to(device)
        if x.ndim == 6:  # (B, clips, C, T, H, W)
            b, k = x.shape[:2]
            p = torch.softmax(model(x.flatten(0, 1)).logits.float(), dim=-1).view(b, k, -1).mean(dim=1)
        else:
            p = torch.softmax(model(x).logits.float(), dim=-1)
        scores.append(p.cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(scores), torch.cat(labels)


def evaluate_classification(checkpoint: str | Path, video_list: str | Path, data_prefix: str | None = None,
                            sampler: str = "uniform", frame_interval: int = 32, num_clips: int = 1,
                            batch_size: int = 8, num_workers: int = 2) -> dict[str, float]:
    ckpt = load_checkpoint(checkpoint)
    num_classes = ckpt.config.head.num_classes
    if not num_classes:
        raise ValueError(f"{checkpoint} has no classification head")
    inp = ckpt.config.input
    if sampler == "uniform":
        sample = None
    elif sampler == "sample_frames":
        sample = SampleFrames(inp.num_frames, frame_interval, num_clips, test_mode=True)
    else:
        raise ValueError(f"sampler must be uniform or sample_frames, got {sampler!r}")
    records = load_video_list(video_list, data_prefix or Path(video_list).parent)
    bad = [r for r in records if r.label >= num_classes]
    if bad:
        raise ValueError(f"{video_list}: label {bad[0].label} of {bad[0].path} is outside the checkpoint's "
                         f"{num_classes} classes")
    ds = DecodedClipDataset([r.path for r in records], [r.label for r in records], inp, inp.num_frames, sample)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers)
    scores, labels = predict(ckpt.model.eval(), tqdm(loader, desc="classify", unit="batch"))
    return {**classification_metrics(scores, labels, num_classes), "videos": float(len(records))}


def find_videos(video_dir: str | Path, ids: list[str]) -> dict[str, Path]:
    """``<video_dir>/<id>.<ext>`` for every id; raises ``FileNotFoundError`` naming the missing ones."""
    video_dir = Path(video_dir)
    found: dict[str, Path] = {}
    for p in video_dir.iterdir() if video_dir.is_dir() else ():
        if has_video_extension(p):
            found.setdefault(p.stem, p)
    missing = [i for i in ids if i not in found]
    if missing:
        raise FileNotFoundError(f"{len(missing)} videos not found in {video_dir} (e.g. {missing[0]!r})")
    return {i: found[i] for i in ids}


def embed_videos(model: nn.Module, paths: Mapping[str, Path], segment_fps: float = 1.0,
                 progress: bool = True) -> dict[str, Tensor]:
    """Per-video segment embeddings ``(S_i, E)``, with the service's segment protocol."""
    out = {}
    for vid, path in tqdm(paths.items(), desc="embed", unit="video", disable=not progress):
        with open_video(path) as reader:
            clips, _ = segment_clips(reader, model.cfg.input, segment_fps)
        out[vid] = embed_clips(model, clips).embeddings
    return out


def evaluate_retrieval(checkpoint: str | Path, queries: str | Path, database: str | Path, relevance: str | Path,
                       video_dir: str | Path, fivr: bool = False, strict: bool = True) -> dict[str, float]:
    """mAP (and R@1, R@10) of Chamfer similarity; FIVR annotations are scored per protocol."""
    model = load_checkpoint(checkpoint).model.eval()
    rs = load_fivr(queries, database, relevance, strict) if fivr else load_near_duplicate(queries, database, relevance, strict)
    ids = list(dict.fromkeys([*rs.queries, *rs.database]))
    emb = embed_videos(model, find_videos(video_dir, ids))
    sims = chamfer_matrix([emb[q] for q in rs.queries], [emb[d] for d in rs.database])
    q, db = list(rs.queries), list(rs.database)
    if not fivr:
        return retrieval_metrics(sims, q, db, rs.relevant)
    out: dict[str, float] = {}
    for p in (Protocol.DSVR, Protocol.CSVR, Protocol.ISVR):
        rel = {qid: relevant_ids(rs.annotation, qid, p) for qid in q}
        out.update({f"{p.value}/{k}": v for k, v in retrieval_metrics(sims, q, db, rel).items()})
    return out
