"""DRCA configuration: dataclasses with every default in one place, plus `--set key=value` overrides."""

from __future__ import annotations

import contextvars
import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Literal, get_args, get_origin

FrameChoice = Literal["diff_rank", "uniform", "wo_diff_rank"]
CompModule = Literal["sal_ref", "conv2d", "conv3d", "patch_merge", "resblock_2d", "resblock_3d"]
ReductionKind = Literal["none", "pca", "whiten"]


# set while `apply_overrides` runs, so that intermediate states of a set of overrides are not validated
_DEFER_VALIDATION: contextvars.ContextVar[bool] = contextvars.ContextVar("drca_defer_validation", default=False)


@dataclass(frozen=True)
class InputConfig:
    """What one clip must look like when it enters the network: (C=3, T=num_frames, img_size, img_size)."""

    num_frames: int = 8
    img_size: int = 224
    # RGB, 0-255 pixel scale (the seed normalises with 127.5 / 127.5).
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)


@dataclass(frozen=True)
class BackboneConfig:
    patch_size: int = 16
    # "patch": one linear projection per patch (ViT, the paper); "conv": a stack of stride-2 3x3 convolutions
    # (BatchNorm, ReLU) down to the same patch grid, then a 1x1 projection; it needs a power-of-two patch
    # size and trains far better from scratch on small data (Xiao et al., "Early Convolutions Help
    # Transformers See Better", 2021), which is what the CPU preset does.
    #
    # "lite0": the pretrained EfficientNet-Lite0 is the tokenizer (a hybrid DRCA, `model.hybrid`): its
    # first ``stem_split`` MBConv blocks run on every frame, a patch_size / stride convolution makes the
    # DRCA tokens of their feature map, and its remaining blocks run after the DCCM: on full-size maps for
    # the K saliency frames, on half-size maps for the others. ``patch_size`` is the token grid's stride in
    # pixels (32: the stem's own output grid).
    stem: Literal["patch", "conv", "lite0"] = "patch"
    stem_split: int = 5  # lite0: MBConv blocks before the DCCM (5: stride 8, 40 channels)
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    drop_path: float = 0.1
    dropout: float = 0.0
    # DCCM: inserted before layer `comp_insert_layer`; -1 disables compression (a plain TimeSformer).
    comp_insert_layer: int = -1
    num_saliency: int = 4  # K: frames kept at full resolution
    frame_choice: FrameChoice = "diff_rank"
    comp_module: CompModule = "sal_ref"
    sigma: float = 0.05  # std of the Gaussian perturbation in the perturbed top-k
    num_samples: int = 500  # Monte-Carlo samples of the perturbed top-k
    sal_ref_heads: int = 4
    use_sdpa: bool = True  # False: explicit softmax(QK^T)V, identical maths (used to count FLOPs exactly)


@dataclass(frozen=True)
class HeadConfig:
    num_classes: int = 0  # 0: no classification head; else a linear layer on the feature (the reference's fc_cls)
    embed_dim: int = 256  # 0: no embedding head
    # "linear": a linear projection of the feature to embed_dim, L2-normalised; "feature": the L2-normalised
    # feature itself, no parameters (the reference's retrieval embedding; embed_dim = backbone.embed_dim)
    embedding: Literal["linear", "feature"] = "linear"
    dropout: float = 0.0
    # the feature is the final norm of "cls": the final cls token (the paper); "mean": the mean of every frame's mean patch token (both
    # resolutions after the DCCM), which trains much faster from scratch on small data
    pool: Literal["cls", "mean"] = "cls"
    # a learned linear reduction of the L2-normalised feature (head.embedding=feature only; `model.reduction`):
    # "pca": the centred feature onto its top embed_dim principal directions (orthonormal rows), "whiten": the
    # same scaled by 1/sqrt(eigenvalue) (the reduced training features have identity covariance); L2-normalised
    # after. Its tensors (`reduction.mean`, `reduction.projection`) are in the weights file; embed_dim is then
    # the reduced size. Fitted by `drca train reduce` (training/reduce.py).
    reduction: ReductionKind = "none"


@dataclass(frozen=True)
class DRCAConfig:
    name: str = "custom"
    input: InputConfig = field(default_factory=InputConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)

    def __post_init__(self) -> None:
        if not _DEFER_VALIDATION.get():
            validate(self)

    @property
    def compressed(self) -> bool:
        return self.backbone.comp_insert_layer >= 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DRCAConfig:
        return _from_dict(cls, data, prefix="")


#: The range of every size a config may ask for: far beyond any real DRCA, but bounded, so that a hostile
#: config.json can neither build a network that does not fit in memory nor make a forward pass allocate
#: without limit (`num_samples` has no weights to check it against).
SIZE_LIMITS: dict[str, tuple[int, int]] = {
    "input.num_frames": (1, 1024), "input.img_size": (1, 4096),
    "backbone.patch_size": (1, 512), "backbone.embed_dim": (1, 8192), "backbone.depth": (1, 256),
    "backbone.num_heads": (1, 256), "backbone.num_saliency": (1, 1024), "backbone.num_samples": (1, 100_000),
    "backbone.sal_ref_heads": (1, 256), "backbone.stem_split": (0, 16),
    "head.num_classes": (0, 100_000), "head.embed_dim": (0, 8192),
}


def validate(cfg: DRCAConfig) -> None:
    b, i = cfg.backbone, cfg.input
    for key, (low, high) in SIZE_LIMITS.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not low <= value <= high:
            raise ValueError(f"{key}={value} is outside [{low}, {high}]")
    if not 0 < b.mlp_ratio <= 16:
        raise ValueError(f"backbone.mlp_ratio={b.mlp_ratio} is outside (0, 16]")
    if b.stem == "lite0":
        _validate_lite0(cfg)
        return
    if i.img_size % b.patch_size:
        raise ValueError(f"input.img_size={i.img_size} is not a multiple of backbone.patch_size={b.patch_size}")
    if b.stem == "conv" and (b.patch_size < 2 or b.patch_size & (b.patch_size - 1)):
        raise ValueError(f"stem=conv needs a power-of-two backbone.patch_size, got {b.patch_size}")
    if b.embed_dim % b.num_heads:
        raise ValueError(f"backbone.embed_dim={b.embed_dim} is not divisible by backbone.num_heads={b.num_heads}")
    if b.comp_insert_layer >= 0:
        grid = i.img_size // b.patch_size
        if grid % 2:
            raise ValueError(f"compression halves the {grid}x{grid} patch grid, which must be even")
        if not 0 <= b.comp_insert_layer < b.depth:
            raise ValueError(f"backbone.comp_insert_layer={b.comp_insert_layer} must be -1 or in [0, {b.depth})")
        if not 0 < b.num_saliency < i.num_frames:
            raise ValueError(
                f"backbone.num_saliency={b.num_saliency} must be in [1, input.num_frames={i.num_frames})"
            )
        if b.comp_module == "sal_ref" and b.embed_dim % b.sal_ref_heads:
            raise ValueError(f"backbone.embed_dim must be divisible by backbone.sal_ref_heads={b.sal_ref_heads}")
        if b.frame_choice != "uniform" and grid < 3:
            raise ValueError(f"the ScoreNet's unpadded 3x3 conv needs a patch grid of at least 3x3, got {grid}x{grid}")
    _validate_embedding(cfg.head, b.embed_dim)
    for name, value in (("frame_choice", b.frame_choice), ("comp_module", b.comp_module)):
        allowed = get_args(FrameChoice if name == "frame_choice" else CompModule)
        if value not in allowed:
            raise ValueError(f"backbone.{name}={value!r} is not one of {', '.join(allowed)}")


def _validate_lite0(cfg: DRCAConfig) -> None:
    """The hybrid's constraints: tokens on the stem's stride-32 grid, the DCCM always on, a 1280-d feature."""
    from model.efficientnet_spec import FEATURE_DIM, NUM_BLOCKS, block_stride

    b, i, h = cfg.backbone, cfg.input, cfg.head
    if not 1 <= b.stem_split < NUM_BLOCKS:
        raise ValueError(f"backbone.stem_split={b.stem_split} must be in [1, {NUM_BLOCKS})")
    stride = block_stride(b.stem_split)
    if b.patch_size != 32 or i.img_size % 32:
        raise ValueError(f"stem=lite0 needs backbone.patch_size=32 and input.img_size a multiple of 32, got "
                         f"{b.patch_size} and {i.img_size}")
    if b.embed_dim % b.num_heads or b.embed_dim % b.sal_ref_heads:
        raise ValueError(f"backbone.embed_dim={b.embed_dim} must be divisible by num_heads and sal_ref_heads")
    if b.comp_insert_layer < 0 or b.comp_module != "sal_ref" or stride > 32:
        raise ValueError("stem=lite0 needs the DCCM (comp_insert_layer >= 0) with comp_module=sal_ref and a "
                         "stem_split below the stride-32 stage")
    if not 0 <= b.comp_insert_layer < b.depth or not 0 < b.num_saliency <= i.num_frames:
        raise ValueError(f"backbone.comp_insert_layer must be in [0, {b.depth}) and num_saliency in "
                         f"[1, {i.num_frames}] (num_frames: no compression)")
    if b.frame_choice != "uniform" and i.img_size // 32 < 3:
        raise ValueError("the ScoreNet needs a token grid of at least 3x3 (input.img_size >= 96)")
    if h.embedding != "feature" or h.num_classes not in (0, 1000):
        raise ValueError(f"stem=lite0 embeds its {FEATURE_DIM}-d feature (head.embedding=feature) and classifies "
                         "the 1000 ImageNet classes (or none)")
    _validate_embedding(h, FEATURE_DIM)


def _validate_embedding(h: HeadConfig, feature_dim: int) -> None:
    """head.embedding=feature: embed_dim is the feature's width, or, with a reduction, at most that."""
    if h.reduction not in get_args(ReductionKind):
        raise ValueError(f"head.reduction={h.reduction!r} is not one of {', '.join(get_args(ReductionKind))}")
    if h.embedding != "feature":
        if h.reduction != "none":
            raise ValueError("head.reduction reduces the feature: it needs head.embedding=feature")
        return
    if h.reduction == "none" and h.embed_dim not in (0, feature_dim):
        raise ValueError(
            f"head.embedding=feature embeds the {feature_dim}-d feature itself: head.embed_dim must be "
            f"{feature_dim} (or 0), got {h.embed_dim}"
        )
    if h.reduction != "none" and not 0 < h.embed_dim <= feature_dim:
        raise ValueError(f"head.reduction={h.reduction} reduces the {feature_dim}-d feature: head.embed_dim must be "
                         f"in [1, {feature_dim}], got {h.embed_dim}")


def feature_dim(cfg: DRCAConfig) -> int:
    """The width of the network's feature (what a `head.reduction` reduces)."""
    if cfg.backbone.stem == "lite0":
        from model.efficientnet_spec import FEATURE_DIM

        return FEATURE_DIM
    return cfg.backbone.embed_dim


def _from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"config section {prefix or '<root>'!r} must be an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown config keys: {', '.join(sorted(prefix + k for k in unknown))}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if is_dataclass(tp):
            kwargs[name] = _from_dict(tp, value, prefix + name + ".")
        else:
            kwargs[name] = _coerce(tp, value, prefix + name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Convert a JSON value or a command-line string to the field's declared type."""
    origin = get_origin(tp)
    if origin is Literal:
        if value not in get_args(tp):
            raise ValueError(f"{key}={value!r} is not one of {', '.join(map(str, get_args(tp)))}")
        return value
    if origin in (tuple, list):
        items = value.strip("()[] ").split(",") if isinstance(value, str) else list(value)
        item_types = get_args(tp)
        item_tp = item_types[0] if item_types else str
        return tuple(_coerce(item_tp, v.strip() if isinstance(v, str) else v, key) for v in items if v != "")
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"{key}: union-typed config fields are not supported")
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            lowered = str(value).lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}={value!r} is not a valid {tp.__name__}") from None
    raise TypeError(f"{key}: unsupported config type {tp}")


def apply_overrides(cfg: Any, overrides: list[str] | tuple[str, ...]) -> Any:
    """Return a copy of a (nested) config dataclass with `section.key=value` overrides applied.

    Works for DRCAConfig and for any other config dataclass (the trainers' configs use it too). The order
    of the overrides does not matter: the DRCA configs are validated once, after all of them are applied.
    """
    token = _DEFER_VALIDATION.set(True)
    try:
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} must look like key.path=value")
            path, raw = item.split("=", 1)
            keys = path.strip().split(".")
            cfg = _set_path(cfg, keys, raw.strip(), full=path.strip())
    finally:
        _DEFER_VALIDATION.reset(token)
    _validate_nested(cfg)
    return cfg


def _validate_nested(obj: Any) -> None:
    if isinstance(obj, DRCAConfig):
        validate(obj)
    elif is_dataclass(obj):
        for f in fields(obj):
            _validate_nested(getattr(obj, f.name))


def _set_path(obj: Any, keys: list[str], raw: str, full: str) -> Any:
    if not is_dataclass(obj):
        raise ValueError(f"unknown config key {full!r}")
    hints = typing.get_type_hints(type(obj))
    name = keys[0]
    if name not in {f.name for f in fields(obj)}:
        valid = ", ".join(f.name for f in fields(obj))
        raise ValueError(f"unknown config key {full!r} ({name!r} is not one of: {valid})")
    current = getattr(obj, name)
    if len(keys) == 1:
        if is_dataclass(current):
            raise ValueError(f"config key {full!r} is a section; set one of its fields instead")
        new_value = _coerce(hints[name], raw, full)
    else:
        new_value = _set_path(current, keys[1:], raw, full)
    return replace(obj, **{name: new_value})
