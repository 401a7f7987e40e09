"""mmaction2 annotation lists.

Two line formats, one record per line, whitespace separated:

* video list: ``path label`` (``path`` may contain spaces: the label is the last field);
* rawframe list: ``dir total_frames label``.

Paths are relative to ``data_prefix`` when one is given (mmaction's ``data_prefix``). Blank lines and
lines starting with ``#`` are skipped. Malformed lines raise :class:`AnnotationError` naming the file
and the 1-based line number.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file and line."""

    def __init__(self, source: str | Path, line_no: int | None, reason: str) -> None:
        self.source = str(source)
        self.line_no = line_no
        self.reason = reason
        where = f"{self.source}:{line_no}" if line_no is not None else self.source
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class VideoRecord:
    """One line of a video list: ``path label``; ``path`` already joined with ``data_prefix``."""

    path: Path
    label: int


@dataclass(frozen=True)
class RawframeRecord:
    """One line of a rawframe list: ``dir total_frames label``; ``frame_dir`` joined with ``data_prefix``."""

    frame_dir: Path
    total_frames: int
    label: int


def _content_lines(path: Path) -> Iterable[tuple[int, list[str]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AnnotationError(path, None, "annotation file not found") from None
    except UnicodeDecodeError as exc:
        raise AnnotationError(path, None, f"not UTF-8 text ({exc.reason})") from None
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        yield line_no, line.split()


def _parse_int(value: str, what: str, path: Path, line_no: int, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise AnnotationError(path, line_no, f"{what} must be an integer, got {value!r}") from None
    if number < minimum:
        raise AnnotationError(path, line_no, f"{what} must be >= {minimum}, got {number}")
    return number


def _join(prefix: Path | None, rel: str) -> Path:
    return Path(rel) if prefix is None else prefix / rel


def load_video_list(path: str | Path, data_prefix: str | Path | None = None) -> list[VideoRecord]:
    """Parse an mmaction video list (``path label`` per line)."""
    path = Path(path)
    prefix = Path(data_prefix) if data_prefix is not None else None
    records: list[VideoRecord] = []
    for line_no, fields in _content_lines(path):
        if len(fields) < 2:
            raise AnnotationError(path, line_no, f"expected 'path label', got {' '.join(fields)!r}")
        label = _parse_int(fields[-1], "label", path, line_no, minimum=0)
        records.append(VideoRecord(path=_join(prefix, " ".join(fields[:-1])), label=label))
    return records


def load_rawframe_list(path: str | Path, data_prefix: str | Path | None = None) -> list[RawframeRecord]:
    """Parse an mmaction rawframe list (``dir total_frames label`` per line)."""
    path = Path(path)
    prefix = Path(data_prefix) if data_prefix is not None else None
    records: list[RawframeRecord] = []
    for line_no, fields in _content_lines(path):
        if len(fields) < 3:
            raise AnnotationError(
                path, line_no, f"expected 'dir total_frames label', got {' '.join(fields)!r}"
            )
        total = _parse_int(fields[-2], "total_frames", path, line_no, minimum=1)
        label = _parse_int(fields[-1], "label", path, line_no, minimum=0)
        frame_dir = _join(prefix, " ".join(fields[:-2]))
        records.append(RawframeRecord(frame_dir=frame_dir, total_frames=total, label=label))
    return records


def _relative(p: Path, data_prefix: str | Path | None) -> str:
    if data_prefix is None:
        return p.as_posix()
    try:
        return p.relative_to(Path(data_prefix)).as_posix()
    except ValueError:
        raise ValueError(f"{p} is not under data_prefix {data_prefix}") from None


def _check_field(text: str, what: str) -> None:
    if not text or "\n" in text or text != text.strip():
        raise ValueError(f"{what} {text!r} cannot be written as one annotation field")


def write_video_list(
    path: str | Path, records: Iterable[VideoRecord], data_prefix: str | Path | None = None
) -> None:
    """Write ``path label`` lines; paths are written relative to ``data_prefix`` when given."""
    lines = []
    for rec in records:
        rel = _relative(rec.path, data_prefix)
        _check_field(rel, "path")
        if rec.label < 0:
            raise ValueError(f"label must be >= 0, got {rec.label}")
        lines.append(f"{rel} {rec.label}\n")
    Path(path).write_text("".join(lines), encoding="utf-8")


def write_rawframe_list(
    path: str | Path, records: Iterable[RawframeRecord], data_prefix: str | Path | None = None
) -> None:
    """Write ``dir total_frames label`` lines; dirs relative to ``data_prefix`` when given."""
    lines = []
    for rec in records:
        rel = _relative(rec.frame_dir, data_prefix)
        _check_field(rel, "frame_dir")
        if rec.total_frames < 1 or rec.label < 0:
            raise ValueError(f"bad record {rec}: total_frames must be >= 1 and label >= 0")
        lines.append(f"{rel} {rec.total_frames} {rec.label}\n")
    Path(path).write_text("".join(lines), encoding="utf-8")
