"""One thread that samples every device at a fixed interval (never two pollers on one device)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from llem_agent.energy.errors import DeviceLost
from llem_agent.energy.nvml import SLOW_FIELDS_S, EnergyBackend
from llem_agent.telemetry import Sample


class Sampler:
    """One thread that reads every device each interval; never two pollers on one device.

    A read that fails is a gap in the trace; a device that is lost (``DeviceLost``) is kept in
    ``lost`` for whoever stops the sampler to raise: the thread itself never raises."""

    def __init__(self, backend: EnergyBackend, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self.interval_s = interval_s
        self.clock = clock
        self.samples: list[Sample] = []
        self.lost: DeviceLost | None = None
        self._sweeps = 0
        self._slow_every = max(1, round(SLOW_FIELDS_S / interval_s)) if interval_s > 0 else 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llem-nvml-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[Sample]:
        """Stop the thread if it runs (idempotent; a sampler never started just hands its samples)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return self.samples

    def sample_once(self, full: bool | None = None) -> None:
        """One sweep over the devices: each stamped when its power is read. ``full``: every
        field (default: about once a second, and power alone in between)."""
        full = self._sweeps % self._slow_every == 0 if full is None else full
        self._sweeps += 1
        power_only = getattr(self.backend, "read_power", None)
        for index in range(len(self.backend.device_names())):
            with contextlib.suppress(Exception):  # one failed read is a gap, not a crash
                now = self.clock()
                try:
                    if full or power_only is None:
                        self.samples.append(replace(self.backend.read(index), time_s=now, device=index))
                    else:
                        self.samples.append(Sample(time_s=now, device=index, power_w=float(power_only(index))))
                except DeviceLost as exc:
                    self.lost = self.lost or exc
                    raise

    def _run(self) -> None:
        while not self._stop.is_set():
            started = self.clock()
            self.sample_once()
            self._stop.wait(max(0.0, self.interval_s - (self.clock() - started)))
