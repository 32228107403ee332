"""Liveness for the host: a ``heartbeat`` file in the run directory that the agent keeps fresh.

While the agent loads (downloads, engine builds: long and silent), a background thread
beats. Once it measures, only real progress beats (each finished batch), so a hung agent
goes stale and the host can kill it, while a slow download never does.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from types import TracebackType

_BACKGROUND_PHASES = frozenset({"read", "baseline", "load"})


class Heartbeat:
    def __init__(self, path: Path, interval_s: float = 2.0) -> None:
        self.path = path
        self.interval_s = interval_s
        self._phase = "read"
        self._progress = 0
        self._last = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llem-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._write()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self._phase in _BACKGROUND_PHASES:
                self._write()

    def phase(self, name: str) -> None:
        self._phase = name
        self._write()

    def progress(self) -> None:
        """One unit of work done (a batch); writes at most once per interval to stay cheap."""
        self._progress += 1
        if time.monotonic() - self._last >= self.interval_s:
            self._write()

    def _write(self) -> None:
        # No fsync: liveness needs freshness, not durability, and this may run in the window.
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_text(json.dumps({"phase": self._phase, "progress": self._progress, "at": time.time()}))
            os.replace(tmp, self.path)
        except OSError:
            return
        self._last = time.monotonic()
