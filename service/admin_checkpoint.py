"""Checkpoints named by a client (`POST /v1/admin/reindex`) or by the state file such a request left
(`reindex-online.json`): vetted before anything reads them as a checkpoint.

- The path must lie inside one of `admin_checkpoint_dirs`, both as written (made absolute and normalised
  without touching the filesystem, so `/proc/...`, `..` escapes and the like are refused before any lookup)
  and once its symlinks are resolved (a link out of an allowed directory is refused too).
- `config.json`, `card.json` and `model.safetensors` are opened relative to the directory's descriptor with
  `O_NOFOLLOW | O_NONBLOCK` and must be regular files (`fstat`, `S_ISREG`) of bounded size: a FIFO, a device,
  a symlink or a directory is refused at once, never waited on.
- The weights are read from that descriptor, at most `admin_checkpoint_max_bytes` of them, and hashed (the
  checkpoint's identity, `service.generations`); the result is a `CheckpointFiles` holding their bytes, so
  the reindex loads the network from what was checked and never opens the directory again.
- Asked for the identity only (`weights=False`: a request that may well answer the progress of the reindex
  already running, or 409), a weights file already hashed is not read again: `IdentityCache` keeps the
  sha256 of the files it hashed by (device, inode, size, mtime_ns, ctime_ns), so the same file costs one
  `fstat`, and a file written since (even in place, to the same size) is hashed again.

Every refusal is a `CheckpointRefused` whose message is "checkpoint refused: <reason>", the reason one of a
few fixed sentences: neither the path given nor what it resolves to, nor an OS error's text, is ever
echoed, and every bad path (`/proc/self/fd/9`, `/proc/1/cwd`, a NUL byte, 5,000 characters, a symlink loop,
a missing directory) gets the same one.

`vet_in_background` is what a route calls: the check runs in a small pool of its own with a deadline, so
request threads never wait on a file; a busy pool or a check past its deadline is a 503.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from model.checkpoint import (
    CARD,
    CONFIG,
    MAX_BACKGROUND_BYTES,
    WEIGHTS,
    Background,
    CheckpointError,
    CheckpointFiles,
    ModelCard,
    parse_background,
    parse_config_and_card,
)
from service.errors import InvalidInput, ServiceError
from service.settings import Settings

MAX_PATH_CHARS = 4096  # PATH_MAX: anything longer names no file
MAX_JSON_BYTES = 16 * 1024**2  # config.json, card.json
CHECK_WORKERS = 2  # checks that run at once (a check stuck on a slow disk holds one of these, never a request thread)
MAX_PENDING = 64  # checks running or waiting for a checker; more: 503 at once
CHUNK = 1 << 20
KNOWN_FILES = 64  # weights files whose sha256 is remembered (least recently used forgotten first)

NOT_ALLOWED = "not a checkpoint directory inside the allowed checkpoint directories (admin_checkpoint_dirs)"
NONE_ALLOWED = ("this server allows no checkpoint directory: set admin_checkpoint_dirs "
                "(DRCA_ADMIN_CHECKPOINT_DIRS) to the directories that new checkpoints are put in")


class CheckpointRefused(CheckpointError):
    """A checkpoint named by a client is not accepted; the message never names a path."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"checkpoint refused: {reason}")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


FileKey = tuple[int, int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns


def _file_key(st: os.stat_result) -> FileKey:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class IdentityCache:
    """The sha256 of weights files already hashed, by `FileKey`: a file is hashed again only once it has
    been written (its mtime or ctime moves) or replaced (another inode). Thread-safe, bounded."""

    def __init__(self, max_entries: int = KNOWN_FILES) -> None:
        self.max_entries = max_entries
        self._known: OrderedDict[FileKey, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: FileKey) -> str | None:
        with self._lock:
            sha = self._known.get(key)
            if sha is not None:
                self._known.move_to_end(key)
            return sha

    def put(self, key: FileKey, sha256: str) -> None:
        with self._lock:
            self._known[key] = sha256
            self._known.move_to_end(key)
            while len(self._known) > self.max_entries:
                self._known.popitem(last=False)


def _open_regular(dir_fd: int, name: str, max_bytes: int) -> tuple[int, os.stat_result]:
    """(descriptor, status) of the regular file `name` in the directory; never follows a link or blocks."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        raise CheckpointRefused(f"{name} is missing or not a regular file") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointRefused(f"{name} is missing or not a regular file")
        if st.st_size > max_bytes:
            raise CheckpointRefused(f"{name} is larger than {max_bytes} bytes")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _chunks(fd: int, name: str, max_bytes: int) -> Iterable[bytes]:
    """The file's bytes; refused if it grows past `max_bytes` while read."""
    total = 0
    while chunk := os.read(fd, CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise CheckpointRefused(f"{name} is larger than {max_bytes} bytes")
        yield chunk


def _read(dir_fd: int, name: str, max_bytes: int) -> bytes:
    fd, _ = _open_regular(dir_fd, name, max_bytes)
    try:
        return b"".join(_chunks(fd, name, max_bytes))
    finally:
        os.close(fd)


def _resolve(given: object, allowed: list[Path]) -> str:
    """The checkpoint directory's real path, inside an allowed directory; `CheckpointRefused` otherwise."""
    if not allowed:
        raise CheckpointRefused(NONE_ALLOWED)
    if not isinstance(given, str | os.PathLike):
        raise CheckpointRefused(NOT_ALLOWED)
    try:
        text = os.fspath(given)
        if not isinstance(text, str) or not text or len(text) > MAX_PATH_CHARS or "\x00" in text:
            raise CheckpointRefused(NOT_ALLOWED)
        written = os.path.normpath(os.path.abspath(text))
        roots = [(os.path.normpath(os.path.abspath(d)), os.path.realpath(d)) for d in allowed]
        if not any(_inside(written, r) for pair in roots for r in pair):
            raise CheckpointRefused(NOT_ALLOWED)  # decided on the text alone: nothing outside is looked up
        real = os.path.realpath(written, strict=True)
    except (OSError, ValueError, RuntimeError):  # missing, a loop, a permission, a name too long
        raise CheckpointRefused(NOT_ALLOWED) from None
    if not any(_inside(real, resolved) for _, resolved in roots):
        raise CheckpointRefused(NOT_ALLOWED)  # a link out of the allowed directories
    return real


def _weights(dir_fd: int, max_bytes: int, keep: bool, known: IdentityCache | None) -> tuple[str, bytes | None]:
    """(sha256, bytes when `keep`) of the weights file; with `known` and not `keep`, a file hashed before is
    not read. What is hashed is remembered only if the file did not change while it was read."""
    fd, st = _open_regular(dir_fd, WEIGHTS, max_bytes)
    try:
        key = _file_key(st)
        if not keep and known is not None and (sha := known.get(key)) is not None:
            return sha, None
        data = b"".join(_chunks(fd, WEIGHTS, max_bytes))
        sha = hashlib.sha256(data).hexdigest()
        if known is not None and _file_key(os.fstat(fd)) == key:
            known.put(key, sha)
        return sha, data if keep else None
    finally:
        os.close(fd)


def vet_checkpoint(given: object, allowed: list[Path], max_bytes: int, weights: bool = True,
                   known: IdentityCache | None = None) -> CheckpointFiles:
    """Check the checkpoint directory `given` (module docstring) and read it once (its path resolved, inside an
    allowed directory); `CheckpointRefused` (a `CheckpointError`) with a fixed reason otherwise. Without
    `weights`, the result holds the identity only (`weights` None), from `known` when it has the file."""
    real = _resolve(given, allowed)
    try:
        dir_fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        raise CheckpointRefused(NOT_ALLOWED) from None
    try:
        try:
            cfg, card = parse_config_and_card(_read(dir_fd, CONFIG, MAX_JSON_BYTES),
                                               _read(dir_fd, CARD, MAX_JSON_BYTES))
        except CheckpointRefused:
            raise
        except CheckpointError as e:  # its message names no file
            raise CheckpointRefused(str(e)) from None
        if cfg.head.embed_dim <= 0:
            raise CheckpointRefused("the checkpoint has no embedding head")
        try:
            sha256, data = _weights(dir_fd, max_bytes, weights, known)
        except OSError:
            raise CheckpointRefused(f"{WEIGHTS} cannot be read") from None
        background = _background(dir_fd, card, sha256, cfg.head.embed_dim) if weights else None
    finally:
        os.close(dir_fd)
    return CheckpointFiles(Path(real), cfg, card, sha256, data, background)


def _background(dir_fd: int, card: ModelCard, weights_sha256: str, embed_dim: int) -> Background | None:
    """The card's background set (model.checkpoint.MatchBackground), read like the other files and checked."""
    entry = card.match.background if card.match is not None else None
    if entry is None:
        return None
    try:
        data = _read(dir_fd, entry.file, MAX_BACKGROUND_BYTES)
    except OSError:
        raise CheckpointRefused(f"{entry.file} cannot be read") from None
    try:
        return parse_background(data, entry, weights_sha256, embed_dim)
    except CheckpointError as e:  # its message names no directory
        raise CheckpointRefused(str(e)) from None


_identities = IdentityCache()  # the weights files this process has hashed


def vet_for(settings: Settings, given: object, weights: bool = True) -> CheckpointFiles:
    """`vet_checkpoint` with the settings' allowed directories and size limit, and this process's
    `IdentityCache`."""
    return vet_checkpoint(given, list(settings.admin_checkpoint_dirs), settings.admin_checkpoint_max_bytes,
                          weights=weights, known=_identities)


_pool = ThreadPoolExecutor(max_workers=CHECK_WORKERS, thread_name_prefix="drca-checkpoint-check")
_pending = threading.BoundedSemaphore(MAX_PENDING)


async def vet_in_background(settings: Settings, given: object, weights: bool = True) -> CheckpointFiles:
    """`vet_for` off the request threads, within `admin_checkpoint_check_s` (waiting for a free checker
    included): 422 `invalid_checkpoint` when refused, 503 when `MAX_PENDING` checks are already waiting or
    running, or when this one takes longer (it then finishes on its own, holding its checker)."""
    if not _pending.acquire(blocking=False):
        raise ServiceError("too many checkpoint checks at once; try again shortly", status=503,
                           code="checkpoint_check_busy", headers={"Retry-After": "5"})
    try:
        future = _pool.submit(vet_for, settings, given, weights)
    except BaseException:
        _pending.release()
        raise
    future.add_done_callback(lambda _: _pending.release())  # run, failed or cancelled before it ran
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), settings.admin_checkpoint_check_s)
    except TimeoutError:
        raise ServiceError(f"checking the checkpoint took longer than {settings.admin_checkpoint_check_s:g} s",
                           status=503, code="checkpoint_check_timeout", headers={"Retry-After": "30"}) from None
    except CheckpointRefused as e:
        raise InvalidInput(str(e), code="invalid_checkpoint") from None
