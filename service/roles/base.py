"""What every role shares: its parts started in order and stopped in reverse, then its resources closed."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from indexer import SegmentIndex
from service.backends.parts import Part

log = logging.getLogger(__name__)


def index_size(index: SegmentIndex | None) -> tuple[int, int]:
    """(videos, segments) of an index; (0, 0) without one (a metric, read at scrape time)."""
    if index is None:
        return 0, 0
    st = index.stats()
    return st.videos, st.segments


class Role:
    def __init__(self, parts: Sequence[Part], closers: Sequence[Callable[[], None]]) -> None:
        self._parts = tuple(parts)
        self._closers = tuple(closers)
        self._started: list[Part] = []
        self._stopped = False

    def start(self) -> None:
        """Start every part in order; if one fails, the ones started are stopped and everything closed."""
        try:
            for part in self._parts:
                part.start()
                self._started.append(part)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the parts started, in reverse order, then close the resources (once; a role built but never
        started is closed too)."""
        if self._stopped:
            return
        self._stopped = True
        for part in reversed(self._started):
            part.stop()
        for close in self._closers:
            close()
