from pathlib import Path

import pytest

from training.data.annotations import (
    AnnotationError,
    RawframeRecord,
    VideoRecord,
    load_rawframe_list,
    load_video_list,
    write_rawframe_list,
    write_video_list,
)


def test_video_list_round_trip_with_prefix(tmp_path: Path) -> None:
    prefix = tmp_path / "data"
    records = [VideoRecord(prefix / "a/x.mp4", 0), VideoRecord(prefix / "b/y z.mp4", 3)]
    ann = tmp_path / "train.txt"
    write_video_list(ann, records, data_prefix=prefix)
    assert ann.read_text() == "a/x.mp4 0\nb/y z.mp4 3\n"
    assert load_video_list(ann, data_prefix=prefix) == records
    assert load_video_list(ann) == [VideoRecord(Path("a/x.mp4"), 0), VideoRecord(Path("b/y z.mp4"), 3)]


def test_rawframe_list_round_trip(tmp_path: Path) -> None:
    records = [RawframeRecord(Path("v1"), 300, 1), RawframeRecord(Path("v2"), 12, 0)]
    ann = tmp_path / "rf.txt"
    write_rawframe_list(ann, records)
    assert ann.read_text() == "v1 300 1\nv2 12 0\n"
    assert load_rawframe_list(ann) == records
    assert load_rawframe_list(ann, "/d")[0].frame_dir == Path("/d/v1")


def test_comments_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    ann = tmp_path / "a.txt"
    ann.write_text("# header\n\nx.mp4 1\n   \n")
    assert load_video_list(ann) == [VideoRecord(Path("x.mp4"), 1)]


@pytest.mark.parametrize(
    ("loader", "text", "line", "fragment"),
    [
        (load_video_list, "a.mp4 0\nb.mp4\n", 2, "expected 'path label'"),
        (load_video_list, "a.mp4 0\nb.mp4 cat\n", 2, "label must be an integer"),
        (load_video_list, "a.mp4 -1\n", 1, "label must be >= 0"),
        (load_rawframe_list, "d 10 0\nd 10\n", 2, "expected 'dir total_frames label'"),
        (load_rawframe_list, "d x 0\n", 1, "total_frames must be an integer"),
        (load_rawframe_list, "# c\nd 0 0\n", 2, "total_frames must be >= 1"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, loader, text: str, line: int, fragment: str) -> None:
    ann = tmp_path / "bad.txt"
    ann.write_text(text)
    with pytest.raises(AnnotationError) as err:
        loader(ann)
    assert err.value.line_no == line
    assert f"bad.txt:{line}" in str(err.value)
    assert fragment in str(err.value)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="not found"):
        load_video_list(tmp_path / "nope.txt")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(AnnotationError, match="not UTF-8"):
        load_video_list(binary)


def test_writer_rejects_paths_outside_prefix_and_bad_fields(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not under data_prefix"):
        write_video_list(tmp_path / "a.txt", [VideoRecord(Path("/elsewhere/x.mp4"), 0)], data_prefix=tmp_path)
    with pytest.raises(ValueError, match="label"):
        write_video_list(tmp_path / "a.txt", [VideoRecord(Path("x.mp4"), -2)])
    with pytest.raises(ValueError, match="one annotation field"):
        write_video_list(tmp_path / "a.txt", [VideoRecord(Path("x\n.mp4"), 0)])
