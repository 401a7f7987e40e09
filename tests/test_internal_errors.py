"""The suite's 500 guard (tests/internal_errors.py, run around every test by tests/conftest.py): a test that
gets an unmarked 500 fails, a marked one passes, a 503 is no internal error; and a spawned process's 500
shows in its log."""

from __future__ import annotations

import contextlib
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.errors import ServiceError
from service.http.app import create_app
from service.settings import Settings
from tests.internal_errors import Guard
from tests.procs import HttpServer

pytest_plugins = ["pytester"]


def failing_app(data_dir: Path) -> FastAPI:
    """The real app (its lifespan, which loads a model, is not run) with a route that raises and one that
    answers 503."""
    app = create_app(Settings(data_dir=data_dir, allowed_hosts=["testserver", "127.0.0.1"]))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("injected fault")

    @app.get("/busy")
    def busy() -> None:
        raise ServiceError("overloaded", status=503, code="overloaded")

    return app


@pytest.mark.expects_500("the guard's self-test: its 500s are also seen by the guard around this test")
def test_the_guard_sees_a_500_of_an_in_process_app(tmp_path):
    client = TestClient(failing_app(tmp_path), raise_server_exceptions=False)
    with Guard() as quiet:
        assert client.get("/busy").status_code == 503
        assert client.get("/nowhere").status_code == 404
    assert quiet.found == []
    with Guard() as guard:
        assert client.get("/boom").status_code == 500
    assert len(guard.found) == 2, guard.found  # the 500 sent, and the exception with its trace
    assert "service.http.app: GET '/boom' answered 500" in guard.found
    assert "RuntimeError: injected fault" in guard.found[0] + guard.found[1]


@pytest.mark.expects_500("the guard's self-test: its 500s are also seen by the guard around this test")
def test_an_unmarked_500_fails_its_test_and_a_marked_one_passes(pytester):
    pytester.makeconftest("from tests.conftest import no_internal_errors  # noqa: F401  the suite's guard\n")
    pytester.makeini("[pytest]\nmarkers =\n    expects_500(reason): a fault on purpose\n")
    pytester.makepyfile(textwrap.dedent("""
        import pytest
        from fastapi.testclient import TestClient
        from tests.test_internal_errors import failing_app

        def test_unmarked(tmp_path):
            assert TestClient(failing_app(tmp_path)).get("/boom").status_code == 500

        @pytest.mark.expects_500("a fault on purpose")
        def test_marked(tmp_path):
            assert TestClient(failing_app(tmp_path)).get("/boom").status_code == 500

        def test_503(tmp_path):
            assert TestClient(failing_app(tmp_path)).get("/busy").status_code == 503
    """))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=1)  # test_unmarked passes its own asserts, then fails at teardown
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_unmarked*",
                                 "*internal error(s) (HTTP 500 or an unexpected exception)*",
                                 "*GET '/boom' answered 500*"])
    assert "RuntimeError: injected fault" in result.stdout.str()


class _FailingServer(HttpServer):
    """A real uvicorn process, with `drca serve`'s logging and uvicorn configuration, serving `failing_app`
    (cheaper to start than `drca serve`, which loads a model first)."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        super().__init__([], log, {})
        code = f"""
import logging
from service.http.server import server_config
from service.settings import Settings
from tests.test_internal_errors import failing_app
import uvicorn
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
settings = Settings(data_dir={str(data_dir)!r}, host="127.0.0.1", port={self.port})
uvicorn.Server(server_config(failing_app(settings.data_dir), settings, log_level="info", lifespan="off")).run()
"""
        self.args = [sys.executable, "-c", code]

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/busy", timeout=2).status_code == 503:
                    return
            time.sleep(0.1)
        raise AssertionError(f"server not up in {timeout_s} s:\n{self.tail()}")


@pytest.mark.expects_500("the guard's self-test: its 500s are also seen by the guard around this test")
def test_the_guard_reads_a_500_in_a_spawned_process_log(tmp_path):
    server = _FailingServer(tmp_path / "data", tmp_path / "serve.log")
    try:
        with Guard() as guard:  # started within the test, as a test's own server is
            server.start()
            assert httpx.get(server.url + "/boom", timeout=30).status_code == 500
            server.stop()
            server.start()  # a restart on the same log: the first run's lines still count
        log = "\n".join(guard.found)
        assert "answered 500" in log and '"GET /boom HTTP/1.1" 500' in log and "unhandled error" in log, log
        assert "RuntimeError: injected fault" in log, log
        with Guard() as quiet:  # already running when the test began
            assert httpx.get(server.url + "/busy", timeout=30).status_code == 503
        assert quiet.found == [], quiet.found
    finally:
        server.kill()
