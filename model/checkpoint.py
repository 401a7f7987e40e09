"""Checkpoints: a directory with `model.safetensors`, `config.json` and `card.json`.

Weights are safetensors (never pickle). The text head, when present, is stored in the same file under
the `text_head.` prefix. Loading checks every tensor name and shape against the config and refuses a
mismatch with a message naming the tensor.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import safe_open
from safetensors.numpy import load as load_numpy_bytes
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file, save_file

from model.config import DRCAConfig
from model.drca import DRCA
from model.hybrid import HybridDRCA
from model.text import TextHead

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "card.json"
TEXT_PREFIX = "text_head."
BACKGROUND = "background.safetensors"
#: the background set's tensor in its file
BACKGROUND_TENSOR = "segments"
#: largest background file read (bytes): e.g. 100,000 segments of 1,280 floats
MAX_BACKGROUND_BYTES = 1 << 30


Network = DRCA | HybridDRCA


def build_model(cfg: DRCAConfig) -> Network:
    """The network a config describes: a `HybridDRCA` on the pretrained stem (``backbone.stem=lite0``), else
    the pure DRCA."""
    return HybridDRCA(cfg) if cfg.backbone.stem == "lite0" else DRCA(cfg)


class CheckpointError(ValueError):
    """A checkpoint directory is missing, malformed, or does not match its config."""


class CheckpointMissing(CheckpointError):
    """The directory lacks one of the checkpoint files."""


class MatchBackground(BaseModel):
    """A background set that ships with the checkpoint: the segment embeddings (by this checkpoint's model)
    of videos that are neither indexed nor queried, against which a query's scores are normalised (its
    `match_score`, service/search.py). The file lies in the checkpoint directory."""

    model_config = ConfigDict(extra="forbid")
    file: str = Field(BACKGROUND, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.safetensors$")  # a plain file name
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # of that file
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # of the model.safetensors that embedded it
    top_n: int = Field(5, ge=1, le=1000)  # a query segment's bias: the mean of its top_n cosines to the set
    videos: int = Field(0, ge=0)
    source: str = Field("", max_length=1000)  # one line: the videos and the command


class MatchThreshold(BaseModel):
    """The copy decision of a checkpoint's scores: a video search hit is a copy (`match: true`) when its
    `match_score` (its score normalised against the `background`; without one, its score) reaches
    `min_score`. It depends on the model, so it ships in the card; the card is not part of the
    checkpoint's identity (the weights' sha256), so a recalibration changes no index."""

    model_config = ConfigDict(extra="forbid")
    min_score: float = Field(ge=-1.0, le=1.0)  # a cosine
    # the share of queries with no copy in the index that return any match at `min_score`, on the
    # calibration set; None while the threshold is provisional
    false_positive_rate: float | None = Field(None, ge=0.0, le=1.0)
    calibration: str = Field("", max_length=1000)  # one line: the set and the command; "provisional" before one
    background: MatchBackground | None = None  # None: no normalisation (match_score = score)


class ModelCard(BaseModel):
    """What a checkpoint is and how it was made. Free-form `metrics`; everything else is typed."""

    preset: str = ""
    overrides: list[str] = Field(default_factory=list)
    class_names: list[str] = Field(default_factory=list)
    # optional, one per class (e.g. its WordNet definition): text search embeds "name: description" too
    class_descriptions: list[str] = Field(default_factory=list)
    embed_dim: int = Field(0, ge=0)
    text_dim: int = Field(0, ge=0, le=8192)  # input dim of the text head (MiniLM: 384), 0 without one
    training_data: str = ""
    commands: list[str] = Field(default_factory=list)
    seed: int | None = None
    wall_time_s: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    notes: str = ""
    # where imported weights came from (drca convert-seed): file, sha256, kind, format, reference_config
    source: dict[str, str] = Field(default_factory=dict)
    # the copy decision of search hits (None: no hit is a copy unless a request gives `min_score`)
    match: MatchThreshold | None = None

    @model_validator(mode="after")
    def _check_descriptions(self) -> ModelCard:
        if self.class_descriptions and len(self.class_descriptions) != len(self.class_names):
            raise ValueError(f"{len(self.class_descriptions)} class descriptions for {len(self.class_names)} classes")
        return self


@dataclass
class LoadedCheckpoint:
    model: Network
    config: DRCAConfig
    card: ModelCard
    text_head: TextHead | None


def save_checkpoint(path: str | Path, model: Network, card: ModelCard, text_head: TextHead | None = None) -> Path:
    """Write a checkpoint directory atomically (files written to a temp dir, then renamed into place)."""
    path = Path(path)
    cfg = model.cfg
    if cfg.head.num_classes and len(card.class_names) != cfg.head.num_classes:
        raise CheckpointError(
            f"card has {len(card.class_names)} class names but the head has {cfg.head.num_classes} classes"
        )
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if text_head is not None:
        tensors.update({TEXT_PREFIX + k: v.detach().cpu().contiguous() for k, v in text_head.state_dict().items()})
        card = card.model_copy(update={"text_dim": text_head.in_dim})
    card = card.model_copy(update={"embed_dim": cfg.head.embed_dim})
    if card.match is not None and card.match.background is not None:
        # a background set is embedded by particular weights and lies beside them; a newly written checkpoint
        # has neither its file nor (in general) those weights, so its copy decision is calibrated anew
        log.info("%s: the card's match threshold and background set are left out (calibrate this checkpoint: "
                 "python -m benchmarks.ndvr.calibrate)", path)
        card = card.model_copy(update={"match": None})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "drca", "preset": card.preset})
    (tmp / CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    (tmp / CARD).write_text(card.model_dump_json(indent=2) + "\n")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if path.exists():
        old = path.with_name(path.name + ".old")
        if old.exists():
            _rmtree(old)
        path.rename(old)
        tmp.rename(path)
        _rmtree(old)
    else:
        tmp.rename(path)
    return path


def _rmtree(p: Path) -> None:
    for f in p.iterdir():
        f.unlink()
    p.rmdir()


def _require(path: Path, *names: str) -> None:
    for name in names:
        if not (path / name).is_file():
            raise CheckpointMissing(f"{path} is not a drca checkpoint: {name} is missing")


def read_config_and_card(path: str | Path) -> tuple[DRCAConfig, ModelCard]:
    """The checkpoint's config and card, validated, without its weights (what the gateway needs); a one-line
    CheckpointError for a malformed or hostile file (deeply nested, sizes out of `SIZE_LIMITS`)."""
    path = Path(path)
    _require(path, CONFIG, CARD)
    try:
        config_text, card_text = (path / CONFIG).read_bytes(), (path / CARD).read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: bad config or card: {_one_line(e)}") from None
    try:
        return parse_config_and_card(config_text, card_text)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def parse_config_and_card(config_text: bytes | str, card_text: bytes | str) -> tuple[DRCAConfig, ModelCard]:
    """`config.json` and `card.json` from their contents, validated; a one-line CheckpointError (that names no
    file) for anything malformed or hostile."""
    try:
        cfg = DRCAConfig.from_dict(json.loads(config_text))
        card = ModelCard.model_validate_json(card_text)
    except (ValueError, TypeError, KeyError, RecursionError) as e:
        raise CheckpointError(f"bad config or card: {_one_line(e)}") from None
    return cfg, card


def read_weights(path: str | Path, map_location: str | torch.device = "cpu",
                 include_text_head: bool = True) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors by name (safetensors); without the `text_head.` ones if not `include_text_head`."""
    path = Path(path)
    _require(path, WEIGHTS)
    try:
        tensors = load_file(str(path / WEIGHTS), device=str(map_location))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path / WEIGHTS}: not a readable safetensors file ({_one_line(e)})") from None
    if not include_text_head:
        tensors = {k: v for k, v in tensors.items() if not k.startswith(TEXT_PREFIX)}
    return tensors


def read_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the safetensors header, without reading any weight."""
    path = Path(path)
    _require(path, WEIGHTS)
    try:
        with safe_open(str(path / WEIGHTS), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as e:
        raise CheckpointError(f"{path / WEIGHTS}: not a readable safetensors file ({_one_line(e)})") from None


@dataclass(frozen=True)
class Background:
    """A checkpoint's background set, loaded and checked (`MatchBackground`)."""

    vectors: np.ndarray  # (B, E) float32, L2-normalised
    top_n: int
    sha256: str


def parse_background(data: bytes, entry: MatchBackground, weights_sha256: str, embed_dim: int) -> Background:
    """The background set from its file's bytes, checked against the card's entry (the file's sha256, the
    weights that embedded it) and the model (its embedding size); a one-line CheckpointError (that names
    no directory) otherwise."""
    if entry.weights_sha256 != weights_sha256:
        raise CheckpointError(f"{entry.file} was embedded by other weights (sha256 {entry.weights_sha256[:12]}...) "
                              f"than model.safetensors ({weights_sha256[:12]}...); embed it again with these")
    sha = hashlib.sha256(data).hexdigest()
    if sha != entry.sha256:
        raise CheckpointError(f"{entry.file} has sha256 {sha[:12]}..., the card says {entry.sha256[:12]}...")
    try:
        tensors = load_numpy_bytes(data)
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{entry.file}: not a readable safetensors file ({_one_line(e)})") from None
    x = tensors.get(BACKGROUND_TENSOR)
    if x is None or x.dtype not in (np.float32, np.float16) or x.ndim != 2 or not len(x) or x.shape[1] != embed_dim:
        got = "no such tensor" if x is None else f"{x.dtype} {tuple(x.shape)}"
        raise CheckpointError(f"{entry.file}: needs a tensor {BACKGROUND_TENSOR!r}, (B, {embed_dim}) float32 or "
                              f"float16 with B >= 1; it has {got}")
    x = x.astype(np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.isfinite(x).all() or (norms < 1e-6).any():
        raise CheckpointError(f"{entry.file}: its segments must be finite and non-zero")
    return Background(np.ascontiguousarray(x / norms), entry.top_n, sha)


def read_background(path: Path, card: ModelCard, weights_sha256: str, embed_dim: int) -> Background | None:
    """The background set the card names, from the checkpoint directory `path` (None: the card has none)."""
    entry = card.match.background if card.match is not None else None
    if entry is None:
        return None
    f = path / entry.file
    try:
        if f.stat().st_size > MAX_BACKGROUND_BYTES:
            raise CheckpointError(f"{f}: larger than {MAX_BACKGROUND_BYTES} bytes")
        data = f.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: the card's background {entry.file} cannot be read ({e.strerror or e})") from None
    try:
        return parse_background(data, entry, weights_sha256, embed_dim)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


@dataclass(frozen=True)
class CheckpointFiles:
    """A checkpoint directory read once: its config and card, parsed, and the sha256 of its weights file;
    with the file's bytes when the weights are to be loaded (`load_checkpoint_files`), so nothing is
    opened or read twice (a gateway only needs the card and the hash)."""

    path: Path
    config: DRCAConfig
    card: ModelCard
    sha256: str
    weights: bytes | None = None
    background: Background | None = None  # the card's background set, checked (`read_background`)


def read_checkpoint(path: str | Path, weights: bool = True) -> CheckpointFiles:
    """Read a checkpoint directory once: config and card (validated), the weights file hashed, and its
    bytes kept when `weights`, and the card's background set loaded and checked. `CheckpointMissing` when a
    file is missing, `CheckpointError` when one is malformed or unreadable, or the background is not of
    these weights."""
    path = Path(path)
    _require(path, CONFIG, CARD, WEIGHTS)
    cfg, card = read_config_and_card(path)
    try:
        data = (path / WEIGHTS).read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {path / WEIGHTS}: {e.strerror or e}") from None
    sha = hashlib.sha256(data).hexdigest()
    background = read_background(path, card, sha, cfg.head.embed_dim)
    return CheckpointFiles(path, cfg, card, sha, data if weights else None, background)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    path = Path(path)
    _require(path, WEIGHTS)
    cfg, card = read_config_and_card(path)
    return _build(path, cfg, card, read_shapes(path), lambda: read_weights(path, map_location), map_location)


def load_checkpoint_files(files: CheckpointFiles, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """The networks of a checkpoint already read (`read_checkpoint(path, weights=True)`), from the bytes
    read then: the directory is not opened again."""
    if files.weights is None:
        raise ValueError(f"{files.path} was read without its weights")
    data, path = files.weights, files.path

    def tensors() -> dict[str, torch.Tensor]:
        try:
            return load_bytes(data)
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"{path / WEIGHTS}: not a readable safetensors file ({_one_line(e)})") from None

    return _build(path, files.config, files.card, _header_shapes(data, path), tensors, map_location)


def _header_shapes(data: bytes, path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's header (its first 8 bytes: the header's length)."""
    try:
        n = int.from_bytes(data[:8], "little")
        if len(data) < 8 or n > len(data) - 8:
            raise ValueError("the header is cut short")
        header = json.loads(data[8 : 8 + n])
        return {k: tuple(int(d) for d in v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise CheckpointError(f"{path / WEIGHTS}: not a readable safetensors file ({_one_line(e)})") from None


def _build(path: Path, cfg: DRCAConfig, card: ModelCard, shapes: dict[str, tuple[int, ...]],
           read_tensors: Callable[[], dict[str, torch.Tensor]], map_location: str | torch.device) -> LoadedCheckpoint:
    text_shapes = {k[len(TEXT_PREFIX):]: v for k, v in shapes.items() if k.startswith(TEXT_PREFIX)}
    if text_shapes and not card.text_dim:
        raise CheckpointError(f"{path}: weights hold a text head but card.text_dim is 0")
    if cfg.head.num_classes and len(card.class_names) != cfg.head.num_classes:
        raise CheckpointError(
            f"{path}: card has {len(card.class_names)} class names for {cfg.head.num_classes} classes"
        )
    # the networks the config and card describe, built on the meta device (no memory) and checked against
    # the file's shapes: nothing is allocated for a config that does not match its weights
    with torch.device("meta"):
        skeleton = build_model(cfg).state_dict()
        text_skeleton = TextHead(card.text_dim, cfg.head.embed_dim).state_dict() if text_shapes else {}
    _check_shapes(skeleton, {k: v for k, v in shapes.items() if not k.startswith(TEXT_PREFIX)}, path)
    _check_shapes(text_skeleton, text_shapes, path, prefix=TEXT_PREFIX)

    tensors = read_tensors()
    model = build_model(cfg)
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(TEXT_PREFIX)}, strict=True)
    text_head = None
    if text_shapes:
        text_head = TextHead(card.text_dim, cfg.head.embed_dim)
        text_head.load_state_dict({k[len(TEXT_PREFIX):]: v for k, v in tensors.items() if k.startswith(TEXT_PREFIX)},
                                  strict=True)
        text_head.to(map_location).eval()
    model.to(map_location).eval()
    return LoadedCheckpoint(model=model, config=cfg, card=card, text_head=text_head)


def _one_line(e: BaseException) -> str:
    if isinstance(e, ValidationError):
        return "; ".join(f"{'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}" for err in e.errors()[:3])
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return " ".join(str(e).split())[:300] or type(e).__name__


def _check_shapes(expected: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], path: Path,
                  prefix: str = "") -> None:
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(prefix + k for k in missing[:5])}" + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            parts.append(
                f"unexpected {', '.join(prefix + k for k in unexpected[:5])}" + (" ..." if len(unexpected) > 5 else "")
            )
        raise CheckpointError(f"{path}: weights do not match config.json: {'; '.join(parts)}")
    for k, shape in shapes.items():
        if shape != tuple(expected[k].shape):
            raise CheckpointError(
                f"{path}: tensor {prefix + k} has shape {shape}, the config expects {tuple(expected[k].shape)}"
            )
