"""Liveness for the host: a ``heartbeat`` file in the run directory that the agent keeps fresh.

While the agent loads (downloads, engine builds: long and silent) and warms up (a first batch
that compiles or captures graphs, the thermal floor's deliberate idle), a background thread
beats. Once it measures, only real progress beats (each finished batch), so a hung agent goes
stale and the host can kill it, while a slow download never does. A measured batch may take
as long as warm-up's slowest did, and longer than the host's stall timeout: the agent says so
(``patience_s``: three times warm-up's slowest batch) and the host waits that long.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from types import TracebackType

_BACKGROUND_PHASES = frozenset({"read", "baseline", "load", "warmup"})
PATIENCE_FACTOR = 3.0


class Heartbeat:
    def __init__(self, path: Path, interval_s: float = 2.0) -> None:
        self.path = path
        self.interval_s = interval_s
        self._phase = "read"
        self._progress = 0
        self._patience_s = 0.0
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

    def expect(self, batch_s: float) -> None:
        """Measured batches may each take about ``batch_s`` (warm-up's slowest)."""
        self._patience_s = PATIENCE_FACTOR * batch_s
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
            beat = {"phase": self._phase, "progress": self._progress, "at": time.time()}
            if self._patience_s:
                beat["patience_s"] = round(self._patience_s, 3)
            tmp.write_text(json.dumps(beat))
            os.replace(tmp, self.path)
        except OSError:
            return
        self._last = time.monotonic()
