"""Collection and manifest logic of `drca media fetch-real`, offline (tests never download)."""

import json
from pathlib import Path

import numpy as np

from training.data.real import (
    FetchReport,
    RealSource,
    SourceKind,
    VideoEntry,
    _collect,
    _looks_like_video,
    summarize,
)
from training.data.synth import encode_mp4


def _tree(root: Path) -> None:
    (root / "usr/share/x").mkdir(parents=True)
    frames = np.random.default_rng(0).integers(0, 255, size=(10, 48, 64, 3), dtype=np.uint8)
    encode_mp4(frames, 25, root / "usr/share/x/clip.mp4")
    (root / "usr/share/x/broken.avi").write_bytes(b"RIFF....not really an avi")
    (root / "usr/share/x/strings_fr.ts").write_text("<?xml version='1.0'?><TS></TS>")  # Qt translations
    (root / "usr/share/x/readme.txt").write_text("hi")


def test_collect_probes_copies_and_rejects(tmp_path: Path) -> None:
    root, dest = tmp_path / "unpacked", tmp_path / "dest"
    _tree(root)
    (dest / "videos").mkdir(parents=True)
    assert not _looks_like_video(root / "usr/share/x/strings_fr.ts")
    report = FetchReport()
    src = RealSource("pkg", SourceKind.DEBIAN, "pkg")
    _collect(src, "1.0-1", root, dest, report, known={})
    assert [v.file for v in report.videos] == ["videos/pkg__clip.mp4"]
    entry = report.videos[0]
    assert (entry.frames, entry.width, entry.height, entry.fps) == (10, 64, 48, 25.0)
    assert entry.original_path == "usr/share/x/clip.mp4" and entry.package_version == "1.0-1"
    assert (dest / entry.file).read_bytes() == (root / "usr/share/x/clip.mp4").read_bytes()
    assert [r["original_path"] for r in report.rejected] == ["usr/share/x/broken.avi"]
    assert str(tmp_path) not in json.dumps(report.rejected)  # reasons carry no local paths

    # A second pass with the manifest entry known reuses it without probing or copying again.
    again = FetchReport()
    _collect(src, "1.0-1", root, dest, again, known={entry.file: entry})
    assert again.videos == [entry]
    assert summarize([entry])[0].startswith("pkg: 1 videos, 0.4 s")


def test_summary_totals() -> None:
    def e(src: str, d: float, w: int) -> VideoEntry:
        return VideoEntry(f"videos/{src}__{d}", src, src, "1", "x", "0", 1000, d, 25.0, 25, w, w // 2)

    lines = summarize([e("a", 2.0, 320), e("a", 3.0, 640), e("b", 1.0, 160)])
    assert lines == [
        "a: 2 videos, 5.0 s (2.0-3.0 s), 320x160, 640x320",
        "b: 1 videos, 1.0 s (1.0-1.0 s), 160x80",
        "total: 3 videos, 6.0 s, 0.0 MB",
    ]


def test_collect_images_keeps_decodable_large_enough_unique_stills(tmp_path: Path) -> None:
    from PIL import Image

    from training.data.real import MIN_IMAGE_SIDE, _collect_images

    root, dest = tmp_path / "unpacked", tmp_path / "dest"
    (root / "a").mkdir(parents=True)
    (dest / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    big = rng.integers(0, 255, size=(MIN_IMAGE_SIDE, 200, 3), dtype=np.uint8)
    Image.fromarray(big).save(root / "a" / "photo.png")
    Image.fromarray(big).save(root / "a" / "copy.png")  # the same bytes under another name
    Image.fromarray(big[:64, :64]).save(root / "a" / "icon.png")  # below MIN_IMAGE_SIDE
    Image.fromarray(big).convert("RGBA").save(root / "a" / "clipart.webp")
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (root / "a" / "notes.txt").write_text("hi")
    report = FetchReport()
    src = RealSource("pics", SourceKind.DEBIAN, "pics")
    _collect_images(src, "2.0", root, dest, report, known={})
    names = sorted(Path(e.original_path).name for e in report.images)
    assert names == ["clipart.webp", "copy.png"]  # copy.png sorts first and is kept; photo.png is its duplicate
    assert all((dest / e.file).is_file() and e.package_version == "2.0" for e in report.images)
    assert all(e.width == 200 and e.height == MIN_IMAGE_SIDE for e in report.images)
    assert [r["original_path"] for r in report.rejected] == ["a/broken.jpg"]
