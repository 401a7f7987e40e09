"""Upload storage: stream a multipart body to disk with a running sha256, then store it by content.

The body is parsed as it arrives (`python_multipart`), so an oversize upload is refused with 413 as soon
as it crosses the limit, never after buffering it. Files are kept content-addressed under
`data/videos/<sha256[:2]>/<sha256>.<ext>`; the client's filename is sanitised and kept only as a label,
never used as a path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartState, parse_options_header
from starlette.requests import ClientDisconnect

from media.video import VIDEO_EXTENSIONS
from service.errors import BadRequest, InvalidInput, PayloadTooLarge, ServiceError

MAX_FIELD_BYTES = 64 * 1024  # a non-file form field (external_id, metadata, k, ...)
MAX_FIELDS = 32
_UNSAFE = re.compile(r"[^A-Za-z0-9._ ()+-]+")


def sanitize_filename(name: str | None, max_len: int = 120) -> str | None:
    """A display-safe version of a client filename: last path component, NFKC, no control or odd
    characters (replaced by `_`), no leading dots. None when nothing usable is left."""
    if not name:
        return None
    name = unicodedata.normalize("NFKC", name)
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = _UNSAFE.sub("_", name).strip(" ._")
    return name[:max_len] or None


def extension_of(name: str | None) -> str:
    if name and "." in name:
        ext = name.rsplit(".", 1)[1].lower()
        if ext in VIDEO_EXTENSIONS:
            return ext
    return "bin"


@dataclass
class SpooledUpload:
    path: Path  # temporary file in data/tmp
    sha256: str
    size: int
    filename: str | None  # sanitised

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


@dataclass
class UploadForm:
    file: SpooledUpload | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        if self.file is not None:
            self.file.discard()


class _Part:
    def __init__(self) -> None:
        self.headers: dict[str, bytes] = {}
        self.name: str | None = None
        self.filename: str | None = None
        self.buf = bytearray()
        self.fh = None
        self.path: Path | None = None
        self.sha = hashlib.sha256()
        self.size = 0


async def parse_upload(
    content_type: str, body: AsyncIterator[bytes], tmp_dir: Path, max_file_bytes: int, file_field: str = "file"
) -> UploadForm:
    """Stream a `multipart/form-data` body: the `file_field` part goes to a temp file (hashed as it is
    written), other parts become string fields. Raises `PayloadTooLarge` the moment the file exceeds
    `max_file_bytes` and `BadRequest` for a malformed body. The temp file is removed on any error."""
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise BadRequest("expected a multipart/form-data body with a boundary")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    form = UploadForm()
    state: dict[str, object] = {"part": None, "hname": b"", "hval": b"", "error": None}
    parts: list[_Part] = []

    def on_part_begin() -> None:
        p = _Part()
        parts.append(p)
        state["part"] = p
        if len(parts) > MAX_FIELDS:
            raise BadRequest(f"too many form fields (at most {MAX_FIELDS})")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["hname"] = state["hname"] + data[start:end]  # type: ignore[operator]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["hval"] = state["hval"] + data[start:end]  # type: ignore[operator]

    def on_header_end() -> None:
        p: _Part = state["part"]  # type: ignore[assignment]
        p.headers[bytes(state["hname"]).decode("latin-1").lower()] = bytes(state["hval"])  # type: ignore[arg-type]
        state["hname"], state["hval"] = b"", b""

    def on_headers_finished() -> None:
        p: _Part = state["part"]  # type: ignore[assignment]
        _, opts = parse_options_header(p.headers.get("content-disposition", b""))
        p.name = opts.get(b"name", b"").decode("utf-8", "replace") or None
        fn = opts.get(b"filename")
        p.filename = fn.decode("utf-8", "replace") if fn is not None else None
        if p.name is not None and p.name != file_field and p.name.lower() == file_field:
            raise InvalidInput(f"form field names are case-sensitive: send the video in '{file_field}', "
                               f"not {p.name[:40]!r}")
        if p.name == file_field:
            if form.file is not None or any(q.path for q in parts[:-1]):
                raise BadRequest(f"more than one '{file_field}' part")
            fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=tmp_dir)
            p.fh = os.fdopen(fd, "wb")
            p.path = Path(name)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        p: _Part = state["part"]  # type: ignore[assignment]
        chunk = data[start:end]
        if p.fh is not None:
            p.size += len(chunk)
            if p.size > max_file_bytes:
                raise PayloadTooLarge(f"the upload exceeds the limit of {max_file_bytes} bytes")
            p.sha.update(chunk)
            p.fh.write(chunk)
        else:
            p.buf += chunk
            if len(p.buf) > MAX_FIELD_BYTES:
                raise PayloadTooLarge(f"form field '{p.name}' exceeds {MAX_FIELD_BYTES} bytes")

    def on_part_end() -> None:
        p: _Part = state["part"]  # type: ignore[assignment]
        if p.fh is not None:
            p.fh.flush()
            os.fsync(p.fh.fileno())
            p.fh.close()
            p.fh = None
            form.file = SpooledUpload(p.path, p.sha.hexdigest(), p.size, sanitize_filename(p.filename))
        elif p.name:
            try:
                form.fields[p.name] = p.buf.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"form field '{p.name[:40]}' is not UTF-8 text (only '{file_field}' takes a "
                                 "video)") from None

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
    }
    try:
        parser = MultipartParser(params[b"boundary"], callbacks)
    except FormParserError as e:  # a boundary longer than 256 characters
        raise BadRequest(f"bad multipart boundary: {e}") from None
    try:
        async for chunk in body:
            if chunk:
                parser.write(chunk)
        parser.finalize()
        if parser.state not in (MultipartState.END, MultipartState.BOUNDARY_PADDING):
            raise BadRequest("the multipart body is truncated (no closing boundary)")
    except BaseException as e:  # also a cancelled request (server shutdown): no part file outlives it
        for p in parts:
            if p.fh is not None:
                p.fh.close()
            if p.path is not None:
                with contextlib.suppress(FileNotFoundError):
                    p.path.unlink()
        # e.g. 408 from a stalled body, or the client gone (not the body's fault: not a 400)
        if isinstance(e, ServiceError | ClientDisconnect) or not isinstance(e, Exception):
            raise
        raise BadRequest(f"malformed multipart body: {e}") from None
    return form


class VideoStorage:
    """Content-addressed files under `root`: `<sha[:2]>/<sha>.<ext>`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str, ext: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.{ext}"

    def find(self, sha256: str) -> Path | None:
        d = self.root / sha256[:2]
        if d.is_dir():
            for p in d.glob(f"{sha256}.*"):
                return p
        return None

    def keep(self, upload: SpooledUpload) -> Path:
        """Move a spooled upload into place atomically (same file system), fsync'ing the directory.
        If the content is already stored, the spooled copy is dropped and the stored path returned."""
        existing = self.find(upload.sha256)
        if existing is not None:
            upload.discard()
            return existing
        dest = self.path_for(upload.sha256, extension_of(upload.filename))
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(upload.path, dest)
        fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return dest

    def remove(self, sha256: str) -> None:
        p = self.find(sha256)
        if p is not None:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
