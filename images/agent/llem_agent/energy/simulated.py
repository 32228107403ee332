"""A simulated NVML: the meter's backend (``nvml.EnergyBackend``) for simulated GPUs.

It answers every call ``NvmlBackend`` answers, from a power model driven by the agent itself:
its phase (``phase``: idle before the model loads, loaded idle with the model resident) and
whether the engine is running a batch (``busy``: load). Power follows those levels with a lag
(``simpower.PowerCurve``); the energy counter is the exact integral of that power, advancing in
steps of ``counter_step_s`` (whole millijoules, from a large offset as a real counter); power
readings are instantaneous or one-second averages (the exact mean over the last second);
temperature follows the mean power of the last ``thermal_s``; clocks, utilisation and
clock-event reasons follow the load. Faults come on request (``SimulatedFault``), timed from the
first batch of the measured window. Because the simulator knows the true energy of every
interval, ``simledger.ledger`` is the ground truth the harness's figures are checked
against. Nothing here is a measurement.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from llem_agent.contract import GpuFacts
from llem_agent.contract.simulation import (
    SIMULATED_DRIVER,
    RecordedTrace,
    SimulatedDevice,
    SimulatedFault,
    SimulatedGpus,
)
from llem_agent.energy.errors import DeviceLost, NvmlUnavailable
from llem_agent.energy.nvml import PowerReading
from llem_agent.energy.simpower import Playback, PowerCurve
from llem_agent.telemetry import Sample

# Phases before the model is on the device: the GPU idles at its idle power.
IDLE_PHASES = frozenset({"read", "baseline"})
COUNTER_OFFSET_MJ = 3_600_000_000  # a counter that has run for a while (1 kWh), per device index
DEFAULT_GAP_S = 1.0
DEFAULT_DRIFT_C_PER_S = 2.0
DEFAULT_BIAS = 0.10
SW_THERMAL_SLOWDOWN = 0x20
GPU_IDLE = 0x1
MEMORY_IDLE_MB = 512.0
MEMORY_LOADED_MB = 2048.0


class SimulatedNvml:
    """Simulated GPUs behind the NVML seam. ``only``: the run's UUIDs (as ``NvmlBackend``);
    ``visible``: what this container was given (None: every simulated GPU, as NVML on a host);
    ``trace``: a recorded trace that drives the power from the window's first batch on, its
    readings played back as they were recorded (``simpower.Playback``)."""

    simulated = True

    def __init__(
        self,
        spec: SimulatedGpus,
        only: list[str] | None = None,
        visible: list[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        trace: RecordedTrace | None = None,
    ) -> None:
        self.spec = spec
        self.trace = trace
        self.profile = spec.profile
        self._clock = clock
        self._only = only
        devices = [d for d in spec.devices if visible is None or d.uuid in visible]
        self.seen = devices  # what NVML enumerates here (the agent's visible-GPU check)
        self.devices: list[SimulatedDevice] = [d for d in devices if only is None or d.uuid in only]
        self.origin_s = clock()
        self.curve: PowerCurve | Playback = PowerCurve(self.origin_s, self.profile.idle_w, self.profile.response_s)
        self._lock = threading.RLock()
        self.phase_name = "read"
        self._busy = False
        self.phases: list[tuple[str, float]] = [("read", self.origin_s)]
        self.batches: list[list[float]] = []  # [start, end] of every batch the engine ran
        self.armed_s: float | None = None  # the first batch of the measured window: faults count from it
        self.closed = False

    # --- what the agent tells it -------------------------------------------------------

    def phase(self, name: str) -> None:
        """The agent entered phase ``name`` (baseline, load, warmup, measure, report)."""
        with self._lock:
            now = self._clock()
            self.phase_name = name
            self.phases.append((name, now))
            self._retarget(now)

    def busy(self, running: bool) -> None:
        """A batch started (True) or ended (False) on the engine."""
        with self._lock:
            now = self._clock()
            self._busy = running
            if running:
                self.batches.append([now, now])
                if self.phase_name == "measure" and self.armed_s is None:
                    self.armed_s = now
                    self._schedule_throttling(now)
                    if self.trace is not None and isinstance(self.curve, PowerCurve):
                        self.curve = Playback(self.curve, now, self.trace)
            elif self.batches:
                self.batches[-1][1] = now
            self._retarget(now)

    def _schedule_throttling(self, armed: float) -> None:
        fault = self.fault("throttling")
        if fault is not None:
            self._throttle_from = armed + fault.at_s
            self._pending_throttle = True

    _throttle_from: float | None = None
    _pending_throttle = False

    def _throttled(self, t: float) -> bool:
        return self._throttle_from is not None and t >= self._throttle_from

    def _level(self, t: float) -> float:
        p = self.profile
        if self._busy:
            return p.load_w * (p.throttle_factor if self._throttled(t) else 1.0)
        return p.idle_w if self.phase_name in IDLE_PHASES else p.loaded_idle_w

    def _retarget(self, now: float) -> None:
        self._advance(now)
        self.curve.retarget(now, self._level(now))

    def _advance(self, now: float) -> None:
        """Apply a change the clock has reached (throttling setting in) at its own time."""
        if self._pending_throttle and self._throttle_from is not None and now >= self._throttle_from:
            self._pending_throttle = False
            self.curve.retarget(self._throttle_from, self._level(self._throttle_from))

    def now(self) -> float:
        with self._lock:
            now = self._clock()
            self._advance(now)
            return now

    # --- faults --------------------------------------------------------------------------

    def fault(self, kind: str, field: str | None = None) -> SimulatedFault | None:
        return next(
            (f for f in self.spec.faults if f.kind == kind and (field is None or f.field == field)),
            None,
        )

    def _fired(self, kind: str, t: float) -> SimulatedFault | None:
        """The fault ``kind`` if it has set in by ``t`` (timed from the window's first batch)."""
        fault = self.fault(kind)
        if fault is None or self.armed_s is None or t < self.armed_s + fault.at_s:
            return None
        return fault

    def _unsupported(self, field: str) -> bool:
        return self.fault("unsupported", field) is not None

    def check_devices(self) -> None:
        """Raise ``DeviceLost`` once a device is lost: what CUDA does to an engine's next kernel."""
        for index in range(len(self.devices)):
            self._check_lost(self.now(), index)

    def _check_lost(self, t: float, index: int) -> None:
        if self._fired("device_lost", t) is not None:
            raise DeviceLost(f"GPU {index} ({self.devices[index].name}) is lost: it fell off the bus (simulated fault)")

    # --- the NVML seam ---------------------------------------------------------------------

    def open(self) -> SimulatedNvml:
        if self._only is not None and not self._only:
            raise NvmlUnavailable("no GPU was given to this run (CPU run)")
        if not self.devices:
            raise NvmlUnavailable(
                "the simulated NVML sees none of this run's GPUs" if self._only else "no simulated GPU here"
            )
        return self

    def device_names(self) -> list[str]:
        return [d.name for d in self.devices]

    def device_uuids(self) -> list[str]:
        return [d.uuid for d in self.devices]

    def visible_uuids(self) -> list[str]:
        """Every simulated GPU NVML enumerates here (the agent's visible-GPU check)."""
        return [d.uuid for d in self.seen]

    def nvml_indices(self) -> list[int]:
        return list(range(len(self.devices)))

    def power_readings(self) -> list[PowerReading]:
        return [PowerReading(kind=self.profile.power_reading) for _ in self.devices]

    def counter_step_at(self, t: float) -> float:
        """The last time at or before ``t`` the counter advanced."""
        step = self.profile.counter_step_s
        return self.origin_s + math.floor((t - self.origin_s) / step + 1e-9) * step

    def counter_j(self, t: float) -> float:
        """What the counter shows at ``t``, in joules since the origin (faults applied)."""
        tick = self.counter_step_at(t)
        energy = self.curve.energy_j(tick)
        bias = self.fault("counter_bias")
        if bias is not None:
            energy *= 1.0 + (bias.amount if bias.amount is not None else DEFAULT_BIAS)
        reset = self._fired("counter_reset", tick)
        if reset is not None and self.armed_s is not None:
            energy -= self.curve.energy_j(self.counter_step_at(self.armed_s + reset.at_s))
        return energy

    def total_energy_mj(self, index: int) -> int:
        now = self.now()
        self._check_lost(now, index)
        if self._unsupported("energy"):
            name = self.devices[index].name
            raise NvmlUnavailable(f"GPU {index} ({name}) has no total-energy counter: Not Supported")
        reset = self._fired("counter_reset", self.counter_step_at(now)) is not None
        offset = 0 if reset else COUNTER_OFFSET_MJ * (self.devices[index].index + 1)
        return offset + math.floor(self.counter_j(now) * 1000.0)

    def power_at(self, t: float) -> float:
        """The power reading at ``t``: instantaneous, or the exact mean over the second before (a
        played-back trace: the reading recorded then)."""
        if isinstance(self.curve, Playback) and t >= self.curve.start_s:
            return self.curve.power_w(t)
        if self.profile.power_reading == "average_1s":
            return self.curve.mean_w(t - 1.0, t)
        return self.curve.power_w(t)

    def read_power(self, index: int) -> float:
        now = self.now()
        self._check_lost(now, index)
        gap = self._fired("sampling_gap", now)
        if gap is not None and self.armed_s is not None:
            length = gap.duration_s if gap.duration_s is not None else DEFAULT_GAP_S
            if now < self.armed_s + gap.at_s + length:
                raise NvmlUnavailable(f"GPU {index}: power reading timed out (simulated sampling gap)")
        return self.power_at(now)

    def temperature_c(self, t: float) -> float:
        p = self.profile
        temperature = p.ambient_c + p.c_per_w * self.curve.mean_w(t - p.thermal_s, t)
        drift = self._fired("temperature_drift", t)
        if drift is not None and self.armed_s is not None:
            rate = drift.amount if drift.amount is not None else DEFAULT_DRIFT_C_PER_S
            temperature += rate * (t - self.armed_s - drift.at_s)
        return temperature

    def read(self, index: int) -> Sample:
        power = self.read_power(index)
        now = self.now()
        device = self.devices[index]
        busy = self._busy
        throttled = busy and self._throttled(now)
        loaded = self.phase_name not in IDLE_PHASES
        clock = self.profile.max_clock_mhz * (self.profile.throttle_factor if throttled else 1.0)
        return Sample(
            time_s=0.0,
            device=index,
            power_w=power,
            temperature_c=None if self._unsupported("temperature") else self.temperature_c(now),
            memory_used_mb=None if self._unsupported("memory") else MEMORY_LOADED_MB if loaded else MEMORY_IDLE_MB,
            memory_total_mb=None if self._unsupported("memory") else device.memory_mb,
            sm_utilisation_pct=None if self._unsupported("utilisation") else 100.0 if busy else 0.0,
            sm_clock_mhz=None if self._unsupported("clock") else clock if busy else self.profile.idle_clock_mhz,
            throttle_reasons=SW_THERMAL_SLOWDOWN if throttled else 0 if busy else GPU_IDLE,
        )

    def facts(self) -> list[GpuFacts]:
        lost = self._fired("device_lost", self.now()) is not None
        return [
            GpuFacts(
                index=i,
                name=d.name,
                uuid=d.uuid,
                driver_version=SIMULATED_DRIVER,
                cuda_driver_version=None,
                power_limit_w=None if lost or self._unsupported("power_limit") else d.power_limit_w,
                persistence_mode=None if lost else True,
            )
            for i, d in enumerate(self.devices)
        ]

    def close(self) -> None:
        self.closed = True
