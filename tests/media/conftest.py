from __future__ import annotations

from pathlib import Path

import pytest

from tests.media.media import write_index_video


@pytest.fixture(scope="session")
def index_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 frames at 25 fps (12 s) whose frame i encodes i."""
    return write_index_video(tmp_path_factory.mktemp("media") / "index300.mp4", 300)


@pytest.fixture(scope="session")
def short_index_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 frames at 25 fps (4 s): shorter than an 8x32 clip."""
    return write_index_video(tmp_path_factory.mktemp("media") / "index100.mp4", 100)
