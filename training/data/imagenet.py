"""The 1,000 ImageNet-1k class names: the teacher's classes and so the shipped checkpoint's.

Provenance: the ``timm`` wheel (``pip download --no-deps timm``, never installed) ships the class order
(``timm/data/_info/imagenet_synsets.txt``, the standard sorted-WordNet-id order the teacher's ``_fc`` uses),
the lemmas (``imagenet_synset_to_lemma.txt``) and the WordNet definitions
(``imagenet_synset_to_definition.txt``). ``build_classes`` derives the classes from them; ``CLASSES_FILE``
holds its result (committed, tab-separated: index, WordNet id, name, lemmas, definition). A class's name is
its first lemma; the two first lemmas that occur twice ("crane", "maillot") get a distinguishing word so
that names are unique.
"""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass
from pathlib import Path

CLASSES_FILE = Path(__file__).with_name("imagenet_classes.tsv")
TIMM_VERSION = "1.0.31"
TIMM_WHEEL_SHA256 = "5bd50f7d0fe6d09bf9285ac2523234a1b7e6bf075c0be3e7aed09139fcb617c7"
_INFO = "timm/data/_info/"
# first lemmas shared by two classes -> a unique name (from their WordNet definitions)
_DISAMBIGUATE = {
    "n02012849": "crane (bird)",
    "n03126707": "crane (machine)",
    "n03710637": "maillot (tights)",
    "n03710721": "maillot (swimsuit)",
}


@dataclass(frozen=True)
class ImageNetClass:
    index: int
    wnid: str
    name: str
    lemmas: str
    definition: str


def _table(zf: zipfile.ZipFile, member: str) -> dict[str, str]:
    rows = zf.read(_INFO + member).decode("utf-8").splitlines()
    return dict(line.split("\t", 1) for line in rows if "\t" in line)


def build_classes(timm_wheel: str | Path) -> list[ImageNetClass]:
    """The 1,000 classes, in the teacher's output order, from a downloaded ``timm`` wheel."""
    with zipfile.ZipFile(timm_wheel) as zf:
        synsets = zf.read(_INFO + "imagenet_synsets.txt").decode("utf-8").split()
        lemmas = _table(zf, "imagenet_synset_to_lemma.txt")
        definitions = _table(zf, "imagenet_synset_to_definition.txt")
    if len(synsets) != 1000:
        raise ValueError(f"{timm_wheel}: {len(synsets)} ImageNet synsets, expected 1000")
    out = []
    for i, wnid in enumerate(synsets):
        lem = lemmas[wnid].strip()
        name = _DISAMBIGUATE.get(wnid, lem.split(",")[0].strip())
        out.append(ImageNetClass(i, wnid, name, lem, definitions.get(wnid, "").strip()))
    if len({c.name for c in out}) != 1000:
        raise ValueError("ImageNet class names are not unique")
    return out


def load_classes(path: Path = CLASSES_FILE) -> list[ImageNetClass]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [ImageNetClass(int(r["index"]), r["wnid"], r["name"], r["lemmas"], r["definition"]) for r in rows]


def class_names(path: Path = CLASSES_FILE) -> list[str]:
    """The 1,000 names in the teacher's output order (what a distilled checkpoint's card carries)."""
    return [c.name for c in load_classes(path)]


def class_descriptions(path: Path = CLASSES_FILE) -> list[str]:
    """One text per class for a checkpoint card's ``class_descriptions``: its lemmas and WordNet definition."""
    return [f"{c.lemmas}; {c.definition}" for c in load_classes(path)]
