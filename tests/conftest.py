"""Shared pytest fixtures live in the per-package conftest files under tests/<package>/."""

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def openvino_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One OpenVINO model cache for the session (the default is per data dir, and tests make many data
    dirs): each checkpoint is exported once per test process, not once per test. Spawned `drca serve`
    processes inherit it."""
    before = os.environ.get("DRCA_RUNTIME_CACHE_DIR")
    os.environ["DRCA_RUNTIME_CACHE_DIR"] = str(tmp_path_factory.mktemp("openvino-cache"))
    yield
    if before is None:
        os.environ.pop("DRCA_RUNTIME_CACHE_DIR", None)
    else:
        os.environ["DRCA_RUNTIME_CACHE_DIR"] = before
