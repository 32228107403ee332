"""The energy meter: brackets the measured window with every energy source of the run."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llem_agent.contract import BaselineConfig, EnergyReport, GpuFacts
from llem_agent.energy.errors import NvmlUnavailable
from llem_agent.energy.external import ExternalSampler, ExternalSource, make_sampler
from llem_agent.energy.gpu import NvmlSource
from llem_agent.energy.nvml import DEFAULT_INTERVAL_S, EnergyBackend, NvmlBackend
from llem_agent.energy.rapl import RaplSource
from llem_agent.energy.source import EnergySource, Window, WindowWork
from llem_agent.telemetry import Sample


class EnergyMeter:
    """Brackets a measured window with every energy source of the run, as peers: its GPUs
    through NVML (counter reads and a power/thermal trace), its CPU packages through RAPL
    (``cpu_factory``: the production builds add them) and an external tool, Zeus or
    CodeCarbon, where the config asks for one (``external_factory``).

    The sources start in order, CPU packages, GPUs, external tool, and stop in reverse, so each
    window encloses the next one's; then the report passes through them in the same order, each
    writing what it measured. The idle baseline, the loaded idle power, the device facts and the
    telemetry are the GPUs' (``gpu``).
    """

    def __init__(
        self,
        backend_factory: Callable[[], EnergyBackend],
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        external_factory: Callable[[list[int]], ExternalSampler | None] | None = None,
        cpu_factory: Callable[[], list[EnergySource]] | None = None,
    ) -> None:
        self.gpu = NvmlSource(backend_factory, interval_s, clock)
        self._external_factory = external_factory
        self._cpu_factory = cpu_factory
        self.interval_s = interval_s
        self.window = Window()
        self.sources: list[EnergySource] = [self.gpu]

    @property
    def sleep(self) -> Callable[[float], None]:
        """How the GPUs' source waits for a step of the counters (a fake clock's in tests)."""
        return self.gpu.sleep

    @sleep.setter
    def sleep(self, value: Callable[[float], None]) -> None:
        self.gpu.sleep = value

    @property
    def samples(self) -> list[Sample]:
        """The GPUs' power/thermal trace of the last window."""
        return self.gpu.samples

    def open(self) -> EnergyMeter:
        self.gpu.open()
        cpu = self._cpu_factory() if self._cpu_factory is not None else []
        external: list[EnergySource] = []
        if self._external_factory is not None:  # before the model loads: a missing extra fails fast
            sampler = self._external_factory(self.gpu.nvml_indices())
            if sampler is not None:
                external.append(ExternalSource(sampler))
        self.sources = [*cpu, self.gpu, *external]
        # One poller per device: where another source samples the GPUs, llem's thread stays off.
        self.gpu.own_poller = not any(s.polls_gpu for s in self.sources if s is not self.gpu)
        return self

    def close(self) -> None:
        for source in self.sources:
            source.close()

    def start(self) -> None:
        for source in self.sources:
            source.start(self.window)

    def stop(self, work: WindowWork) -> EnergyReport:
        for source in reversed(self.sources):
            source.stop(self.window)
        report = EnergyReport(energy_j=None, source=None)
        for source in self.sources:
            report = source.measured(report, work, self.window)
        return report

    def cannot_bracket_twice(self) -> str | None:
        """Why this meter cannot measure a window before the measured one (a cold start's
        load), or None where it can: every source but CodeCarbon's tracker, which measures one
        window per run. Each window starts afresh; the last one's trace is what is kept."""
        for source in self.sources:
            if getattr(source, "single_window", False):
                name = getattr(getattr(source, "sampler", None), "name", "the energy sampler")
                return f"not measured: {name} measures one window per run, kept for the measured one"
        return None

    def write_telemetry(self, path: Path) -> bool:
        """The window's GPU trace at 1 Hz as a Parquet sidecar; False when there is nothing to write."""
        return self.gpu.write_telemetry(path, self.window)

    def raw_trace(self) -> dict[str, Any] | None:
        """The window's raw NVML readings and counters, as a replay fixture (``LLEM_NVML_TRACE``)."""
        return self.gpu.raw_trace(self.window)

    def device_facts(self) -> list[GpuFacts]:
        """Name, UUID, driver, CUDA, power limit and persistence mode of each of the run's GPUs."""
        return self.gpu.device_facts()

    def device_ids(self) -> list[str]:
        return self.gpu.device_ids()

    def idle_power_w(self, duration_s: float) -> list[float]:
        """Mean power per GPU over ``duration_s`` of sampling (nothing else running)."""
        return self.gpu.idle_power_w(duration_s)

    def loaded_idle(self, duration_s: float, sleep: Callable[[float], None]) -> None:
        """The thermal-floor pause, sampled on the GPUs (:meth:`NvmlSource.loaded_idle`)."""
        self.gpu.loaded_idle(duration_s, sleep)

    def measure_baseline(self, config: BaselineConfig, cache_dir: Path | None) -> None:
        """Take (or reuse) the GPUs' idle baseline; call before the model loads."""
        self.gpu.measure_baseline(config, cache_dir)


def cpu_packages() -> list[EnergySource]:
    """The CPU packages this machine's RAPL counters show (one source for all of them)."""
    return [RaplSource()]


def nvml_meter(
    interval_s: float = DEFAULT_INTERVAL_S, sampler: str | None = "auto", only: list[str] | None = None
) -> EnergyMeter:
    """The production meter: real NVML on the run's GPUs (``only``: their UUIDs), the CPU
    packages through RAPL, plus Zeus or CodeCarbon when ``energy_sampler`` asks."""
    return EnergyMeter(
        lambda: NvmlBackend(only).open(),
        interval_s,
        external_factory=lambda n: make_sampler(sampler, n),
        cpu_factory=cpu_packages,
    )


def disabled_meter() -> EnergyMeter:
    """``energy_sampler: null``: throughput-only runs that never touch NVML (the CPU packages'
    RAPL counters are still read, as they always were)."""

    def refuse() -> EnergyBackend:
        raise NvmlUnavailable("energy measurement disabled (energy_sampler: null)")

    return EnergyMeter(refuse, cpu_factory=cpu_packages)
