"""The suite's guard against internal errors: no test may get an HTTP 500, or make the service log an
unexpected exception, unless it is marked `@pytest.mark.expects_500("why")` (tests/conftest.py runs the
guard around every test).

What it reads, from a test's start to its end:

- in this process (`TestClient(create_app(...))`, uvicorn in a thread): the records of the app's loggers.
  service/http/app.py logs one ERROR record with `http_status == 500` for each 500 it sends, and
  `unhandled error` with the trace for each exception nothing expected (service/errors.py too);
- the `drca serve` and `drca worker` processes of tests/procs.py (`procs.SPAWNED`): their log files, from
  where each was when the test began, for the same records and for uvicorn's access line of a 500.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from types import TracebackType

from tests import procs

#: The loggers of the app's 500s and unexpected exceptions.
LOGGERS = ("service.http.app", "service.errors")
#: A log line of a spawned process that says a 500 was sent, or an unexpected exception was caught.
LOG_LINE = re.compile(r" answered 500$|HTTP/[\d.]+\" 500 |: unhandled error$|Exception in ASGI application")
#: The first line of a record in such a log: the CLI's format (cli/main.py) or uvicorn's (`INFO:     ...`).
RECORD_START = re.compile(r"^(\d{4}-\d\d-\d\d |[A-Z]+: )")


class _Records(logging.Handler):
    """The records of 500s sent and of unexpected exceptions, formatted with their traces."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "http_status", None) == 500 or record.msg == "unhandled error":
            self.found.append(self.format(record))


def errors_in_log(text: str) -> list[str]:
    """Each record of a process's log that says 500 or `unhandled error`, with its trace."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        if LOG_LINE.search(line):
            end = next((j for j in range(i + 1, len(lines)) if RECORD_START.match(lines[j])), len(lines))
            found.append("\n".join(lines[i:end]))
    return found


def _read_from(path: Path, offset: int) -> str:
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


class Guard:
    """`with Guard() as g:` ... then `g.found`: every internal error seen in between, in this process and in
    the logs of the spawned `drca` processes."""

    def __enter__(self) -> Guard:
        self._records = _Records()
        for name in LOGGERS:
            logging.getLogger(name).addHandler(self._records)
        self._offsets = {p: p.log.stat().st_size if p.log.exists() else 0 for p in procs.SPAWNED}
        self.found: list[str] = []
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(self._records)
        self.found = list(self._records.found)
        for p in list(procs.SPAWNED):
            start = self._offsets.get(p, p.log_start)  # a process spawned during the test: from its spawn
            self.found += [f"{p.log}:\n{e}" for e in errors_in_log(_read_from(p.log, start))]
            if not p.running:
                procs.SPAWNED.remove(p)  # its log grows no more (spawn() adds it back if it starts again)

    def report(self) -> str:
        return (f"{len(self.found)} internal error(s) (HTTP 500 or an unexpected exception) during a test not "
                "marked @pytest.mark.expects_500(reason):\n\n"
                + "\n\n".join(sorted(self.found, key=lambda e: "answered 500" not in e)[:5]))  # the requests first
