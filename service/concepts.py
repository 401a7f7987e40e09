"""The concept bank: text search by what the classifier sees in a video.

The checkpoint's classes are the concepts. For each class c the bank holds MiniLM sentence embeddings of
its phrases: its name (underscores and dashes read as spaces) and, when the checkpoint's card gives
class descriptions, "name: description". For a query q and a video v with class probabilities p_v:

    s_c(q)        = max over the phrases t of c of cos(MiniLM(q), MiniLM(t))
    w_c(q)        = exp((s_c(q) - max_c' s_c'(q)) / T)           # softmax over the bank at temperature T,
                                                                  # divided by its largest weight
    concept(v, q) = sum over the stored classes c of v of w_c(q) * p_v(c)

`w` is the softmax of the similarities rescaled so that the class nearest to the query has weight 1:
the ranking it gives is the softmax's, and `concept` reads as the probability mass of the video on the
classes the query names (1.0: all of it on the nearest class), whatever the number of classes. A query
close to several classes (a dog, and ImageNet's 120 dog breeds) spreads its weight over them.

Classes that share a name are one concept (their phrases are pooled), so probabilities stored by name
add up. Nothing here knows which checkpoint it serves: the bank is built from any list of class names.
The phrase embeddings can be cached in a folder, keyed by the phrases and the text encoder's identity,
so a restarted service does not embed them again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

Embed = Callable[[list[str]], np.ndarray]  # texts -> (N, D) L2-normalised sentence embeddings


def class_phrase(name: str) -> str:
    """A class name as text: `playing_guitar` -> `playing guitar`."""
    return " ".join(name.replace("_", " ").replace("-", " ").split())


def bank_phrases(class_names: Sequence[str], descriptions: Sequence[str] = ()) -> tuple[list[str], list[str], list[int]]:
    """The concepts (unique class names, first-seen order) and every phrase with the concept it names."""
    if descriptions and len(descriptions) != len(class_names):
        raise ValueError(f"{len(descriptions)} class descriptions for {len(class_names)} classes")
    names: list[str] = []
    index: dict[str, int] = {}
    phrases: list[str] = []
    owner: list[int] = []
    seen: set[tuple[int, str]] = set()
    for i, name in enumerate(class_names):
        c = index.setdefault(name, len(names))
        if c == len(names):
            names.append(name)
        text = class_phrase(name)
        cand = [text]
        if descriptions and descriptions[i].strip():
            cand.append(f"{text}: {descriptions[i].strip()}")
        for p in cand:
            if p and (c, p) not in seen:
                seen.add((c, p))
                phrases.append(p)
                owner.append(c)
    return names, phrases, owner


@dataclass(frozen=True)
class ConceptBank:
    names: tuple[str, ...]  # the concepts: unique class names
    phrase_emb: np.ndarray  # (P, D) float32, L2-normalised
    phrase_concept: np.ndarray  # (P,) int64: the concept of each phrase

    def __post_init__(self) -> None:
        # (C, most phrases of a concept): each concept's phrase rows, padded with P (a -inf similarity)
        counts = np.bincount(self.phrase_concept, minlength=len(self.names))
        table = np.full((len(self.names), max(1, int(counts.max(initial=0)))), len(self.phrase_concept))
        fill = np.zeros(len(self.names), dtype=np.int64)
        for p, c in enumerate(self.phrase_concept.tolist()):
            table[c, fill[c]] = p
            fill[c] += 1
        object.__setattr__(self, "_phrases_of", table)

    @classmethod
    def build(cls, class_names: Sequence[str], embed: Embed, descriptions: Sequence[str] = (),
              cache_dir: Path | None = None, embedder_id: str = "") -> ConceptBank:
        """Embed the phrases of `class_names` (with `descriptions`), or read them from `cache_dir`, where
        `<sha256 of embedder_id and the phrases>.npy` holds them once computed."""
        names, phrases, owner = bank_phrases(class_names, descriptions)
        cached = None
        if cache_dir is not None and phrases:
            digest = hashlib.sha256(json.dumps([embedder_id, phrases]).encode()).hexdigest()[:32]
            cached = Path(cache_dir) / f"{digest}.npy"
        emb = _read_cache(cached, len(phrases))
        if emb is None:
            emb = np.asarray(embed(phrases), dtype=np.float32) if phrases else np.zeros((0, 0), np.float32)
            if emb.shape[0] != len(phrases):
                raise ValueError(f"embed returned {emb.shape[0]} embeddings for {len(phrases)} phrases")
            _write_cache(cached, emb)
        return cls(tuple(names), emb, np.asarray(owner, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.names)

    def similarities(self, query: np.ndarray) -> np.ndarray:
        """s_c(q): (C,) the best cosine between the query's embedding (D,) and each concept's phrases."""
        # einsum, not BLAS: one thread (BLAS threads on a busy machine make this small product erratic)
        sims = np.append(np.einsum("pd,d->p", self.phrase_emb, np.asarray(query, dtype=np.float32)),
                         np.float32(-np.inf))
        return sims[self._phrases_of].max(axis=1)

    def weights(self, query: np.ndarray, temperature: float) -> np.ndarray:
        """w_c(q): (C,) in (0, 1], the nearest concept at 1."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        s = self.similarities(query)
        return np.exp((s - s.max()) / np.float32(temperature))


def concept_scores(weights: np.ndarray, label_ids: np.ndarray, label_probs: np.ndarray) -> np.ndarray:
    """concept(v, q) for N videos: `weights` (V,) per concept id, `label_ids` (N, K) the ids of each
    video's stored classes, `label_probs` (N, K) their probabilities (0 where a row is padded)."""
    if label_ids.size == 0:
        return np.zeros(label_ids.shape[0], dtype=np.float32)
    return np.einsum("nk,nk->n", np.asarray(weights, dtype=np.float32)[label_ids], label_probs)


def _read_cache(path: Path | None, rows: int) -> np.ndarray | None:
    if path is None or not path.is_file():
        return None
    try:
        emb = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        log.warning("ignoring the concept bank cache %s: %s", path, e)
        return None
    if emb.ndim != 2 or emb.shape[0] != rows or emb.dtype != np.float32:
        log.warning("ignoring the concept bank cache %s: shape %s, expected %d rows", path, emb.shape, rows)
        return None
    return emb


def _write_cache(path: Path | None, emb: np.ndarray) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, emb, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as e:  # a read-only data dir: the bank works, it is just not kept
        log.warning("could not keep the concept bank in %s: %s", path.parent, e)
