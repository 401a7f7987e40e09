"""Training configuration: one dataclass per trainer, every default in one place.

Each trainer's config nests the model config, so the seed's `--cfg-options` style works for everything:
`--set model.backbone.comp_module=conv3d --set solver.lr=0.005 --set data.batch_size=4`
(`model.config.apply_overrides`). The defaults are the paper's recipes; the CPU recipe that produces the
shipped checkpoint is a set of overrides, written out in `docs/training.md`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from model.config import DRCAConfig, HeadConfig
from model.presets import get_preset
from training.data.augment import NEAR_DUPLICATE_AUGMENT, AugmentConfig
from training.data.datasets import CacheConfig

Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class SolverConfig:
    """Optimiser and learning-rate schedule. Defaults: the paper's classification solver."""

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 40.0  # max global L2 norm; 0 disables clipping
    epochs: int = 30
    schedule: Literal["step", "cosine"] = "step"
    milestones: tuple[int, ...] = (10, 20)  # step schedule: epochs at which lr *= gamma
    gamma: float = 0.1
    # linear warm-up over the first warmup_epochs, from warmup_start times the schedule's lr to all of it
    # (mmcv's warmup='linear': it scales the schedule, which itself starts at epoch 0)
    warmup_epochs: float = 0.0
    warmup_start: float = 1e-3
    min_lr_ratio: float = 1e-3  # cosine schedule floor, as a fraction of lr
    score_net_lr_mult: float = 1.0  # learning-rate multiplier of the DCCM ScoreNet
    # weight decay on biases and norm weights too, as the seed's solvers (mmcv's default optimizer
    # constructor); the cls token and the position and time embeddings never get weight decay
    decay_norm_and_bias: bool = True


def _classify_augment() -> AugmentConfig:
    # no flip: the synthetic classes include left/right motions, and a mirrored clip is the other class
    return AugmentConfig(crop_scale=(0.4, 1.0), flip_p=0.0)


@dataclass(frozen=True)
class DataConfig:
    """Where the clips come from and how they are sampled.

    Training clips come from the frame cache (`training.data.datasets`): T frames with temporal jitter
    from a cached window, then `augment`. Evaluation decodes the files with `sampler`.
    """

    train_list: str = ""  # mmaction video list: `path label` per line
    val_list: str = ""
    data_prefix: str = ""  # prepended to every path in the lists (default: the list's folder)
    classes_file: str = ""  # one class name per line; default: the `classes.txt` next to train_list
    # evaluation sampler. "sample_frames": mmaction SampleFrames(model.input.num_frames, frame_interval,
    # num_clips, test_mode=True), the seed's 8 x 32 x 1; "uniform": one frame per equal span (TSN).
    sampler: Literal["sample_frames", "uniform"] = "sample_frames"
    frame_interval: int = 32
    num_clips: int = 1  # clips per video at evaluation (their scores are averaged)
    batch_size: int = 8
    num_workers: int = 2
    cache: CacheConfig = field(default_factory=CacheConfig)
    augment: AugmentConfig = field(default_factory=_classify_augment)
    min_span: float = 0.75  # a training clip covers a random 75-100 % of a cached window


@dataclass(frozen=True)
class RunConfig:
    out_dir: str = "runs/run"
    seed: int = 0
    precision: Precision = "auto"  # auto: bf16 autocast on a GPU that supports it, else fp32
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = 10  # steps between JSONL metric lines
    eval_every: int = 1  # epochs between evaluations (0: only at the end)
    max_steps_per_epoch: int = 0  # 0: the whole dataset
    threads: int = 0  # torch CPU threads per process; 0: torch's default


def _classify_model() -> DRCAConfig:
    return get_preset("drca-s-k4-224")


@dataclass(frozen=True)
class ClassifyConfig:
    model: DRCAConfig = field(default_factory=_classify_model)
    solver: SolverConfig = field(default_factory=SolverConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/classify"))
    init_from: str = ""  # checkpoint directory to fine-tune from (e.g. K8 -> K4); heads are re-initialised on mismatch
    label_smoothing: float = 0.0
    # train only the classifier on the frozen network of `init_from` (a linear probe): every other weight,
    # and so the embedding, stays exactly as it was (batch-norm statistics included)
    freeze_backbone: bool = False


@dataclass(frozen=True)
class MetricLossConfig:
    """MultiSimilarityLoss + MultiSimilarityMiner + CrossBatchMemory (pytorch-metric-learning), as in the seed;
    or `kind=info_nce`: the symmetric InfoNCE (NT-Xent) between the first two views of every instance."""

    kind: Literal["multi_similarity", "info_nce"] = "multi_similarity"
    temperature: float = 0.1  # info_nce

    margin: float = 0.3  # the miner's epsilon
    alpha: float = 2.0
    beta: float = 50.0
    base: float = 0.5
    memory_size: int = 1024  # cross-batch memory (0 disables it); its width is the model's embedding dim
    ce_weight: float = 0.0  # > 0: add cross-entropy on labelled clips, keeping the classifier sharp


@dataclass(frozen=True)
class RetrievalDataConfig:
    train_list: str = ""  # video list (`path label`); labels are used only when loss.ce_weight > 0
    extra_videos: str = ""  # a folder of unlabelled videos (e.g. `drca media fetch-real`), added as instances
    data_prefix: str = ""
    classes_file: str = ""  # with loss.ce_weight > 0; default: the `classes.txt` next to train_list
    views: int = 2  # clips per instance per step (the positives)
    batch_size: int = 16  # instances per step (so views * batch_size clips)
    num_workers: int = 2
    cache: CacheConfig = field(default_factory=CacheConfig)  # every cached window is one instance
    augment: AugmentConfig = field(default_factory=lambda: NEAR_DUPLICATE_AUGMENT)
    ce_augment: AugmentConfig = field(default_factory=_classify_augment)  # the labelled clips of loss.ce_weight
    min_span: float = 0.6  # a view covers a random 60-100 % of its window (speed and sub-clip changes)


def _retrieval_solver() -> SolverConfig:
    # configs/video_retrieval/solver.py: lr = 16 * 8 * 1.5e-4 / 256; its `warmup_epochs=5` variable is unused,
    # the schedule's warm-up is warmup_iters=20 with warmup_by_epoch=True, i.e. 20 epochs
    return SolverConfig(optimizer="adamw", lr=7.5e-5, weight_decay=1e-4, epochs=100, schedule="cosine",
                        warmup_epochs=20, min_lr_ratio=1e-6)


@dataclass(frozen=True)
class RetrievalConfig:
    model: DRCAConfig = field(default_factory=lambda: replace(get_preset("drca-s-224"), head=HeadConfig(0, 384)))
    solver: SolverConfig = field(default_factory=_retrieval_solver)
    data: RetrievalDataConfig = field(default_factory=RetrievalDataConfig)
    loss: MetricLossConfig = field(default_factory=MetricLossConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/retrieval"))
    init_from: str = ""


@dataclass(frozen=True)
class TextDataConfig:
    captions: str = ""  # JSONL: {"video": path, "caption": str} per line (what `drca synth` writes)
    data_prefix: str = ""
    clips_per_video: int = 2  # frozen encoder: video embedding = mean of this many segment embeddings
    batch_size: int = 64
    num_workers: int = 2
    val_fraction: float = 0.1


def _text_solver() -> SolverConfig:
    return SolverConfig(optimizer="adamw", lr=1e-3, weight_decay=1e-4, epochs=40, schedule="cosine",
                        warmup_epochs=1, grad_clip=0.0, decay_norm_and_bias=False)


@dataclass(frozen=True)
class TextConfig:
    init_from: str = ""  # the video checkpoint whose embedding space the text head learns (required)
    solver: SolverConfig = field(default_factory=_text_solver)
    data: TextDataConfig = field(default_factory=TextDataConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/text"))
    hidden: int = 512
    temperature: float = 0.05
    finetune_video: bool = False  # False: the video encoder is frozen and its embeddings are cached
    augment: AugmentConfig = field(default_factory=_classify_augment)  # clips, with finetune_video
