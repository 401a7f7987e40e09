"""The sha256 of a file, read in chunks (never whole into memory), with the standard library only.

It identifies a checkpoint's weights (`service.generations`), a reference checkpoint (`model.seed`), a
fetched package or video (`training.data.real`) and a file `drca ingest` uploads (`service.ingest`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK_BYTES = 1 << 20


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of the file's bytes; ``OSError`` when it cannot be read."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()
