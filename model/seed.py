"""Import checkpoints saved by the reference DRCA code (dun-research/DRCA: mmaction2 0.24, mmcv 1.x).

A reference checkpoint is a torch pickle `{"meta": {..., "config": <mmcv config text>}, "state_dict": {...}}`
(or a bare state dict). It is read with `torch.load(weights_only=True)`; the only globals allowed beyond
torch's defaults are numpy scalars and dtypes (mmcv's `meta` may hold them), and a file that needs any
other global is refused with its name. The config text is parsed with `ast` and never executed.

The architecture comes from three places, checked against each other:
- the tensors: embedding width, patch size, image size, frames, depth, MLP ratio, the compression insert
  layer and module, whether there is a ScoreNet, the number of classes;
- `meta["config"]`: what no tensor records (attention heads, K, diff_rank vs wo_diff_rank, sigma, the
  number of perturbed samples, dropout, the test pipeline's normalisation);
- `--set key=value` overrides of our DRCAConfig, applied last (for what the config lacks).

A classification checkpoint (`backbone.*` + `cls_head.fc_cls.*`) becomes a classifier whose embedding is
the L2-normalised feature (so the service can also index it); a retrieval checkpoint (`backbone.*` only)
becomes an embedding model, likewise the normalised feature: the reference's retrieval head has no
parameters (`SimilarityHead` with `encoder=dict(type='None')`).
"""

from __future__ import annotations

import ast
import logging
import math
import pickle
import re
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from model.checkpoint import ModelCard, save_checkpoint
from model.config import BackboneConfig, DRCAConfig, HeadConfig, InputConfig, apply_overrides
from model.digest import sha256_file
from model.drca import DRCA
from model.presets import PRESETS

log = logging.getLogger(__name__)

BACKBONE = "backbone."
LAYERS = "backbone.transformer_layers.layers."
DCCM_PREFIX = "backbone.transformer_layers.dccm."
CLS_HEAD = "cls_head.fc_cls."


class SeedError(ValueError):
    """A reference checkpoint that cannot be converted; the message is one line saying why."""


# --------------------------------------------------------------------------- reading the file
def _numpy_globals() -> list[Any]:
    """numpy scalars and dtypes, under the names numpy 1.x (which wrote the released checkpoints) and 2.x use."""
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtypes]


@dataclass
class ReferenceCheckpoint:
    state: dict[str, Tensor]
    config_text: str | None  # meta["config"], the mmcv config the checkpoint was trained with
    sha256: str


def read_reference(path: str | Path) -> ReferenceCheckpoint:
    path = Path(path)
    if not path.is_file():
        raise SeedError(f"{path}: no such file")
    digest = sha256_file(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(b"PK\x03\x04") and head[:1] != b"\x80":
        raise SeedError(f"{path}: not a torch checkpoint (neither torch's zip format nor a pickle)")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found:
            raise SeedError(
                f"{path}: refusing to unpickle the global {found.group(1)} (only tensors, containers and numpy "
                "scalars are loaded)"
            ) from None
        raise SeedError(f"{path}: not a readable torch checkpoint, truncated or corrupt ({_first_line(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
        raise SeedError(f"{path}: not a readable torch checkpoint, truncated or corrupt ({_first_line(e)})") from None
    if not isinstance(obj, dict):
        raise SeedError(f"{path}: holds a {type(obj).__name__}, not a checkpoint dict")
    state = obj.get("state_dict", obj)
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise SeedError(f"{path}: its state_dict is not a dict of tensors")
    text = meta.get("config")
    return ReferenceCheckpoint(state=dict(state), config_text=text if isinstance(text, str) else None,
                               sha256=digest)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


# --------------------------------------------------------------------------- the mmcv config text
def parse_mmcv_config(text: str) -> dict[str, Any]:
    """Top-level assignments of an mmcv config file whose values are literals, `dict(...)` calls, names
    of earlier assignments, or arithmetic on numbers. Anything else (imports, function calls) is skipped,
    never executed; `_base_` files are not followed."""
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        raise SeedError(f"meta['config'] is not valid Python config text (line {e.lineno}: {e.msg})") from None
    env: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                env[node.targets[0].id] = _literal(node.value, env)
            except _Unsupported:
                log.debug("config: skipped %s (not a literal)", node.targets[0].id)
    return env


class _Unsupported(Exception):
    pass


def _literal(node: ast.AST, env: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal(n, env) for n in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        out: dict[Any, Any] = {}
        for k, v in zip(node.keys, node.values, strict=True):
            if k is None:  # {**other}
                out.update(_as_dict(_literal(v, env)))
            else:
                out[_literal(k, env)] = _literal(v, env)
        return out
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        out = {}
        for kw in node.keywords:
            if kw.arg is None:  # dict(**other)
                out.update(_as_dict(_literal(kw.value, env)))
            else:
                out[kw.arg] = _literal(kw.value, env)
        return out
    if isinstance(node, ast.Name) and node.id in env:
        return env[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand, env)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        a, b = _literal(node.left, env), _literal(node.right, env)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)):
            if isinstance(node.op, ast.Div):
                return a / b if b else math.nan
            return a + b if isinstance(node.op, ast.Add) else a - b if isinstance(node.op, ast.Sub) else a * b
    raise _Unsupported


def _as_dict(value: Any) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise _Unsupported
    return value


# --------------------------------------------------------------------------- key names
# Our parameter names (left) and the reference's (right), by module.
_LAYER_NAMES = (
    ("temporal.norm.", "attentions.0.norm."),
    ("temporal.attn.", "attentions.0.attn."),
    ("temporal.temporal_fc.", "attentions.0.temporal_fc."),
    ("spatial.norm.", "attentions.1.norm."),
    ("spatial.attn.", "attentions.1.attn."),
    ("spatial_high.norm.", "attentions.1.norm."),
    ("spatial_high.attn.", "attentions.1.attn."),
    ("spatial_low.norm.", "attentions.1.norm_low."),
    ("spatial_low.attn.", "attentions.1.attn_low."),
    ("norm_ffn.", "ffns.0.norm."),
    ("ffn.fc1.", "ffns.0.layers.0.0."),
    ("ffn.fc2.", "ffns.0.layers.1."),
)
_ATTENTION_NAMES = (("qkv.weight", "in_proj_weight"), ("qkv.bias", "in_proj_bias"), ("proj.", "out_proj."))
_SCORE_NET_NAMES = (
    ("conv.", "downsample."), ("bn.", "bn."), ("embed.0.", "in_conv.0."), ("embed.1.", "in_conv.1."),
    ("head.0.", "out_conv.0."), ("head.2.", "out_conv.2."), ("head.4.", "out_conv.4."),
)
_BOTTLENECK_NAMES = (
    ("body.0.", "bottle_neck.conv1."), ("body.1.", "bottle_neck.bn1."), ("body.3.", "bottle_neck.conv2."),
    ("body.4.", "bottle_neck.bn2."), ("body.6.", "bottle_neck.conv3."), ("body.7.", "bottle_neck.bn3."),
    ("shortcut.0.", "bottle_neck.downsample.0."), ("shortcut.1.", "bottle_neck.downsample.1."),
)
_COMPRESSION_NAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "sal_ref": (
        ("norm.", "norm1."), ("q_pool.", "attn.pool_q."), ("q_norm.", "attn.norm_q."), ("q.", "attn.q."),
        ("k.", "attn.k."), ("v.", "attn.v."), ("proj.", "attn.proj."), ("norm_mlp.", "norm2."), ("mlp.", "mlp."),
    ),
    "conv2d": (("net.", "downsample."),),
    "conv3d": (("net.", "reduce."),),
    "patch_merge": (("temporal.", "in_conv."), ("norm.", "norm."), ("reduce.", "reduction.")),
    "resblock_2d": _BOTTLENECK_NAMES,
    "resblock_3d": _BOTTLENECK_NAMES,
}


def _rename(key: str, table: tuple[tuple[str, str], ...]) -> str:
    for ours, theirs in table:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise KeyError(key)


def reference_name(key: str, cfg: DRCAConfig) -> str:
    """The reference's name of one of our state-dict keys."""
    b = cfg.backbone
    stage, _, rest = key.partition(".")
    if stage in ("blocks", "align_blocks"):
        index, _, rest = rest.partition(".")
        layer = int(index) + (b.comp_insert_layer if stage == "align_blocks" else 0)
        name = _rename(rest, _LAYER_NAMES)
        for attn in (".attn.", ".attn_low."):
            head, sep, tail = name.partition(attn)
            if sep:
                name = head + sep + _rename(tail, _ATTENTION_NAMES)
                break
        return f"{LAYERS}{layer}.{name}"
    if key.startswith("dccm.score_net."):
        return DCCM_PREFIX + "rank_net.score_network." + _rename(key[len("dccm.score_net."):], _SCORE_NET_NAMES)
    if key.startswith("dccm.compression."):
        return DCCM_PREFIX + "compression." + _rename(key[len("dccm.compression."):], _COMPRESSION_NAMES[b.comp_module])
    if key.startswith("patch_embed.proj."):
        return BACKBONE + "patch_embed.projection." + key[len("patch_embed.proj."):]
    if key.startswith("cls_head."):
        return CLS_HEAD + key[len("cls_head."):]
    if key in ("cls_token", "pos_embed", "time_embed") or key.startswith("norm."):
        return BACKBONE + key
    raise KeyError(key)


def shared_names(cfg: DRCAConfig) -> dict[str, str]:
    """Every state-dict key of a DRCA built from `cfg` -> its reference name, or the key itself where the
    reference has no such tensor (our embedding head, the conv stem). Checkpoints of
    two configs share a tensor when they share its name here (fine-tuning across configs)."""
    with torch.device("meta"):
        keys = list(DRCA(cfg).state_dict())
    out = {}
    for k in keys:
        try:
            out[k] = reference_name(k, cfg)
        except KeyError:
            out[k] = k
    return out


def key_map(cfg: DRCAConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every state-dict key of a DRCA built from `cfg` -> (the reference's name, the shape)."""
    with torch.device("meta"):
        model = DRCA(cfg)
    return {k: (reference_name(k, cfg), tuple(v.shape)) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- the architecture
@dataclass(frozen=True)
class Architecture:
    config: DRCAConfig
    kind: str  # "classification" or "retrieval"


def _shape(state: dict[str, Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise SeedError(f"not a DRCA state dict: {key} is missing")
    return tuple(state[key].shape)


def infer_architecture(state: dict[str, Tensor], mmcv_cfg: dict[str, Any], overrides: list[str]) -> Architecture:
    if not any(k.startswith(BACKBONE) for k in state):
        sample = ", ".join(sorted(state)[:3]) or "none"
        raise SeedError(f"not a DRCA state dict: no backbone.* tensors (keys: {sample}{', ...' if len(state) > 3 else ''})")
    model_cfg = mmcv_cfg.get("model") if isinstance(mmcv_cfg.get("model"), dict) else {}
    bb = model_cfg.get("backbone") if isinstance(model_cfg.get("backbone"), dict) else {}
    if bb.get("type", "DRCA") != "DRCA":
        raise SeedError(f"meta['config'] describes a {bb['type']} backbone, not DRCA")

    # what the tensors record
    dim = _shape(state, BACKBONE + "cls_token")[-1]
    patch_w = _shape(state, BACKBONE + "patch_embed.projection.weight")
    if len(patch_w) != 4 or patch_w[2] != patch_w[3] or patch_w[1] != 3:
        raise SeedError(f"backbone.patch_embed.projection.weight has shape {patch_w}, expected (D, 3, p, p)")
    patch = patch_w[2]
    num_patches = _shape(state, BACKBONE + "pos_embed")[1] - 1
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise SeedError(f"backbone.pos_embed holds {num_patches} patch positions, not a square grid")
    frames = _shape(state, BACKBONE + "time_embed")[1]
    layer_ids = sorted({int(m.group(1)) for k in state if (m := re.match(re.escape(LAYERS) + r"(\d+)\.", k))})
    if not layer_ids:
        raise SeedError(f"not a DRCA state dict: no {LAYERS}* tensors")
    depth = layer_ids[-1] + 1
    low = [i for i in layer_ids if f"{LAYERS}{i}.attentions.1.norm_low.weight" in state]
    insert = low[0] if low else -1
    hidden = _shape(state, f"{LAYERS}0.ffns.0.layers.0.0.weight")[0]
    comp_module, has_score_net, sal_heads = _compression_from_keys(state)
    if (insert >= 0) != (comp_module is not None):
        raise SeedError("not a DRCA state dict: low-resolution layers and the DCCM must come together")
    classes = _shape(state, CLS_HEAD + "weight")[0] if CLS_HEAD + "weight" in state else 0

    # what the config says, checked against the tensors
    def agree(cfg_key: str, value: Any) -> None:
        if cfg_key in bb and bb[cfg_key] != value:
            raise SeedError(f"meta['config'] says backbone.{cfg_key}={bb[cfg_key]!r} but the tensors say {value!r}")

    agree("embed_dims", dim)
    agree("patch_size", patch)
    agree("img_size", grid * patch)
    agree("num_frames", frames)
    agree("num_transformer_layers", depth)
    agree("in_channels", 3)
    if "comp_insert_layer" in bb and insert == -1 and bb["comp_insert_layer"] > 0:
        raise SeedError(f"meta['config'] says backbone.comp_insert_layer={bb['comp_insert_layer']} "
                        "but the tensors have no DCCM")
    if insert >= 0:
        agree("comp_insert_layer", insert)
        agree("comp_module", comp_module)
    if bb.get("transformer_layers") is not None:
        raise SeedError("meta['config'] sets backbone.transformer_layers; only the default DRCA layers are supported")
    eps = (bb.get("norm_cfg") or {}).get("eps", 1e-6) if isinstance(bb.get("norm_cfg"), dict) else 1e-6
    if abs(float(eps) - 1e-6) > 1e-12:
        raise SeedError(f"meta['config'] sets backbone.norm_cfg eps={eps}; drca's transformer uses 1e-6")
    head_cfg = model_cfg.get("cls_head") if isinstance(model_cfg.get("cls_head"), dict) else {}
    if classes and head_cfg.get("num_classes", classes) != classes:
        raise SeedError(f"meta['config'] says cls_head.num_classes={head_cfg['num_classes']} "
                        f"but cls_head.fc_cls has {classes} rows")

    strategy = bb.get("comp_strategy")
    if insert >= 0 and not has_score_net:
        if strategy not in (None, "uniform"):
            raise SeedError(f"meta['config'] says comp_strategy={strategy!r} but the checkpoint has no ScoreNet")
        strategy = "uniform"
    elif insert >= 0 and strategy == "uniform":
        raise SeedError("meta['config'] says comp_strategy='uniform' but the checkpoint has a ScoreNet")

    # settings no tensor records: from the config, else from --set, else an error naming them
    missing: dict[str, str] = {}
    heads = bb.get("num_heads")
    if heads is None:
        missing["backbone.num_heads"] = "model.backbone.num_heads"
    if insert >= 0 and bb.get("comp_k") is None:
        missing["backbone.num_saliency"] = "model.backbone.comp_k"
    if insert >= 0 and strategy is None:
        missing["backbone.frame_choice"] = "model.backbone.comp_strategy"
    given = {o.split("=", 1)[0].strip() for o in overrides}
    absent = [ours for ours in missing if ours not in given]
    if absent:
        named = ", ".join(f"{ours} (mmcv: {missing[ours]})" for ours in absent)
        raise SeedError(f"the checkpoint does not record {named}: its meta['config'] lacks it; "
                        f"pass --set {absent[0]}=VALUE")

    try:
        return _assemble(bb, frames, grid, patch, dim, depth, hidden, insert, comp_module, strategy, sal_heads,
                         classes, mmcv_cfg, overrides)
    except (ValueError, TypeError) as e:
        raise SeedError(f"bad architecture: {e}") from None


def _assemble(bb: dict[str, Any], frames: int, grid: int, patch: int, dim: int, depth: int, hidden: int,
              insert: int, comp_module: str | None, strategy: str | None, sal_heads: int | None, classes: int,
              mmcv_cfg: dict[str, Any], overrides: list[str]) -> Architecture:
    heads, k = bb.get("num_heads"), bb.get("comp_k")
    mean, std = _normalisation(mmcv_cfg)
    backbone = BackboneConfig(
        patch_size=patch, stem="patch", embed_dim=dim, depth=depth, num_heads=int(heads or 1),
        mlp_ratio=hidden / dim, drop_path=0.1,  # the reference's stochastic depth: linspace(0, 0.1, depth)
        dropout=float(bb.get("dropout_ratio", 0.0)), comp_insert_layer=insert,
        sigma=float(bb.get("sigma", BackboneConfig.sigma)),
        num_samples=int(bb.get("num_samples", BackboneConfig.num_samples)),
    )
    if insert >= 0:
        backbone = replace(backbone, comp_module=comp_module, num_saliency=int(k or 1),
                           frame_choice=strategy or "diff_rank", sal_ref_heads=sal_heads or 4)
    inp = InputConfig(num_frames=frames, img_size=grid * patch, mean=mean, std=std)
    head = HeadConfig(num_classes=classes, embed_dim=dim, embedding="feature", pool="cls")
    cfg = apply_overrides(_ConfigDraft(inp, backbone, head), overrides).build()
    if not cfg.name:
        cfg = replace(cfg, name=_preset_name(cfg))
    return Architecture(config=cfg, kind="classification" if classes else "retrieval")


@dataclass(frozen=True)
class _ConfigDraft:
    """The sections of a DRCAConfig, validated together only once every override is applied."""

    input: InputConfig
    backbone: BackboneConfig
    head: HeadConfig
    name: str = ""  # empty: the matching preset's name, else "converted"

    def build(self) -> DRCAConfig:
        return DRCAConfig(name=self.name, input=self.input, backbone=self.backbone, head=self.head)


def _preset_name(cfg: DRCAConfig) -> str:
    """The preset whose network this is (e.g. drca-s-k4-224), else "converted"."""
    for name, preset in PRESETS.items():
        if preset.input == cfg.input and preset.backbone == cfg.backbone:
            return name
    return "converted"


def _compression_from_keys(state: dict[str, Tensor]) -> tuple[str | None, bool, int | None]:
    """(compression module, has a ScoreNet, sal_ref heads) from the DCCM's tensor names."""
    comp = DCCM_PREFIX + "compression."
    names = {k[len(comp):] for k in state if k.startswith(comp)}
    has_score_net = any(k.startswith(DCCM_PREFIX + "rank_net.score_network.") for k in state)
    if not names:
        if has_score_net:
            raise SeedError("not a DRCA state dict: a ScoreNet without a compression module")
        return None, False, None
    if "attn.pool_q.weight" in names:
        head_dim = state[comp + "attn.pool_q.weight"].shape[0]
        dim = state[comp + "norm1.weight"].shape[0] if comp + "norm1.weight" in state else 0
        return "sal_ref", has_score_net, dim // head_dim if head_dim and dim % head_dim == 0 else None
    for module, prefix in (("conv2d", "downsample."), ("conv3d", "reduce."), ("patch_merge", "in_conv.")):
        if any(n.startswith(prefix) for n in names):
            return module, has_score_net, None
    conv2 = comp + "bottle_neck.conv2.weight"
    if conv2 in state:
        return ("resblock_3d" if state[conv2].ndim == 5 else "resblock_2d"), has_score_net, None
    raise SeedError(f"not a DRCA state dict: unknown compression module tensors ({', '.join(sorted(names)[:3])})")


def _normalisation(mmcv_cfg: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """mean/std of the config's test (else val) pipeline's Normalize step; the seed's 127.5/127.5 without one."""
    data = mmcv_cfg.get("data") if isinstance(mmcv_cfg.get("data"), dict) else {}
    for split in ("test", "val"):
        pipeline = (data.get(split) or {}).get("pipeline") if isinstance(data.get(split), dict) else None
        for step in pipeline or []:
            if isinstance(step, dict) and step.get("type") == "Normalize":
                if step.get("to_bgr"):
                    raise SeedError("meta['config'] normalises to BGR; drca feeds RGB frames")
                return tuple(map(float, step["mean"])), tuple(map(float, step["std"]))
    return InputConfig.mean, InputConfig.std


# --------------------------------------------------------------------------- conversion
def load_reference_weights(ref: ReferenceCheckpoint, cfg: DRCAConfig) -> DRCA:
    """A DRCA built from `cfg` holding the reference tensors; refuses missing, unexpected or misshapen ones."""
    mapping = key_map(cfg)
    wanted = {theirs for theirs, _ in mapping.values()}
    missing = sorted(theirs for theirs in wanted if theirs not in ref.state)
    unexpected = sorted(k for k in ref.state if k not in wanted)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_some(missing)}")
        if unexpected:
            parts.append(f"unexpected {_some(unexpected)}")
        raise SeedError(f"the state dict does not match a DRCA {cfg.name} network: {'; '.join(parts)}")
    for theirs, shape in mapping.values():
        if tuple(ref.state[theirs].shape) != shape:
            raise SeedError(f"tensor {theirs} has shape {tuple(ref.state[theirs].shape)}, the architecture "
                            f"expects {shape}")
    with torch.device("meta"):  # no initialisation: every tensor is assigned from the checkpoint
        model = DRCA(cfg)
    state = {ours: _as_fp32(ref.state[theirs]) for ours, (theirs, _) in mapping.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _as_fp32(t: Tensor) -> Tensor:
    """Floating tensors as contiguous float32 (a checkpoint may hold fp16), others (BN counters) as they are."""
    return (t.float() if t.is_floating_point() else t).contiguous()


def _some(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def read_class_names(path: str | Path) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SeedError(f"--classes {path}: cannot read it ({_first_line(e)})") from None
    return [line.strip() for line in lines if line.strip()]


@dataclass
class Converted:
    path: Path
    config: DRCAConfig
    kind: str


def convert_seed(src: str | Path, out_dir: str | Path, classes_file: str | Path | None = None,
                 overrides: list[str] | None = None, command: str = "") -> Converted:
    """Convert a reference checkpoint into a drca checkpoint directory (see the module docstring)."""
    overrides = list(overrides or [])
    ref = read_reference(src)
    if ref.config_text is None:
        log.warning("%s has no meta['config']: settings no tensor records must come from --set", src)
    mmcv_cfg = parse_mmcv_config(ref.config_text) if ref.config_text else {}
    arch = infer_architecture(ref.state, mmcv_cfg, overrides)
    cfg = arch.config
    names: list[str] = []
    if classes_file is not None:
        if arch.kind == "retrieval":
            raise SeedError("--classes given, but this is a retrieval checkpoint (backbone.* only): it has no classes")
        names = read_class_names(classes_file)
        if len(names) != cfg.head.num_classes:
            raise SeedError(f"--classes {classes_file} has {len(names)} names, the classifier has "
                            f"{cfg.head.num_classes} classes")
    elif arch.kind == "classification":
        names = [f"class_{i}" for i in range(cfg.head.num_classes)]
        log.warning("no --classes file: the %d classes are named class_0 .. class_%d", len(names), len(names) - 1)
    model = load_reference_weights(ref, cfg)
    card = ModelCard(
        preset=cfg.name,
        overrides=overrides,
        class_names=names,
        training_data="the reference DRCA code's training (dun-research/DRCA); see source.reference_config",
        commands=[command] if command else [],
        notes=(f"converted from a reference {arch.kind} checkpoint by drca convert-seed; the embedding is the "
               "L2-normalised backbone feature"),
        source={"file": Path(src).name, "sha256": ref.sha256, "kind": arch.kind,
                "format": "dun-research/DRCA (mmaction2 0.24, mmcv 1.x)",
                "reference_config": ref.config_text or ""},
    )
    path = save_checkpoint(out_dir, model, card)
    return Converted(path=path, config=cfg, kind=arch.kind)
