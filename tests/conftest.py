"""Shared pytest fixtures live in the per-package conftest files under tests/<package>/.

No test may see an internal error: `no_internal_errors` runs around every test and fails it at teardown
when the service answered an HTTP 500 or logged an unexpected exception meanwhile, whether in this
process (`TestClient`, uvicorn in a thread) or in a `drca serve`/`drca worker` process started through
tests/procs.py (its log), naming the request and the trace (tests/internal_errors.py). A test that injects
a fault on purpose says so with `@pytest.mark.expects_500("reason")`; 503s, 504s and other 5xx are not
internal errors and never count."""

import os
from collections.abc import Iterator

import pytest

from tests.internal_errors import Guard


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


@pytest.fixture(autouse=True)
def no_internal_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails the test if it got an HTTP 500 or made the service log an unexpected exception, unless it is
    marked `expects_500`."""
    with Guard() as guard:
        yield
    if guard.found and request.node.get_closest_marker("expects_500") is None:
        pytest.fail(guard.report(), pytrace=False)
