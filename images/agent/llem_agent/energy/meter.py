"""The energy meter: brackets the measured window with counter reads and a power/thermal trace."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llem_agent.baseline import resolve_baseline
from llem_agent.contract import BaselineConfig, BaselineReport, EnergyReport, GpuFacts
from llem_agent.energy.errors import BaselineFailed, NvmlUnavailable
from llem_agent.energy.external import ExternalSampler, make_sampler
from llem_agent.energy.nvml import (
    DEFAULT_INTERVAL_S,
    MAX_STEP_WAIT_S,
    STEP_POLL_S,
    EnergyBackend,
    NvmlBackend,
    _nvml_indices,
    _power_readings,
)
from llem_agent.energy.report import WindowWork, energy_report, with_external
from llem_agent.energy.sampler import Sampler
from llem_agent.telemetry import Sample, downsample, window_samples, write_parquet


class EnergyMeter:
    """Brackets a measured window with counter reads and a power/thermal trace.

    When NVML is missing the meter still works and reports ``energy_j=None`` with the
    reason, so a CPU run is never mistaken for a 0 J run.
    """

    def __init__(
        self,
        backend_factory: Callable[[], EnergyBackend],
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        external_factory: Callable[[list[int]], ExternalSampler | None] | None = None,
    ) -> None:
        self._factory = backend_factory
        self._external_factory = external_factory
        self._external: ExternalSampler | None = None
        self.interval_s = interval_s
        self._clock = clock
        self._backend: EnergyBackend | None = None
        self._reason: str | None = None
        self._sampler: Sampler | None = None
        self._start_mj: list[int | None] = []
        self._window_start = 0.0
        self._window_end = 0.0
        self._baseline: BaselineReport | None = None
        self._baseline_note: str | None = None
        self._baseline_ttl_s: float | None = None
        self._loaded_idle_w: list[float] | None = None
        self._loaded_idle_s: float | None = None
        self._end_mj: list[int | None] = []
        self._steps: list[float] = []
        self._aligned = True
        self._work: WindowWork | None = None
        self.sleep: Callable[[float], None] = time.sleep
        self.samples: list[Sample] = []

    def open(self) -> EnergyMeter:
        try:
            self._backend = self._factory()
        except NvmlUnavailable as exc:
            self._reason = str(exc)
        if self._external_factory is not None:  # before the model loads: a missing extra fails fast
            indices = _nvml_indices(self._backend) if self._backend is not None else []
            self._external = self._external_factory(indices)
        return self

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()
        if self._backend is not None:
            self._backend.close()

    def write_telemetry(self, path: Path) -> bool:
        """The window's trace at 1 Hz as a Parquet sidecar; False when there is nothing to write."""
        inside = window_samples(self.samples, self._window_start, self._window_end)
        if not inside:
            return False
        write_parquet(downsample(inside, self._window_start), path)
        return True

    def device_facts(self) -> list[GpuFacts]:
        """Name, UUID, driver, CUDA, power limit and persistence mode of each of the run's GPUs."""
        return self._backend.facts() if self._backend is not None else []

    # PowerSource, for the idle baseline
    def device_ids(self) -> list[str]:
        assert self._backend is not None
        return self._backend.device_uuids()

    def _idle_samples(self, duration_s: float, sleep: Callable[[float], None]) -> list[Sample]:
        assert self._backend is not None
        sampler = Sampler(self._backend, self.interval_s, self._clock)
        for _ in range(max(1, round(duration_s / self.interval_s))):
            sampler.sample_once()
            sleep(self.interval_s)
        return sampler.samples

    def _mean_power(self, samples: list[Sample], what: str) -> list[float]:
        """Mean power per device; a device without a single reading fails loudly, never 0 W."""
        assert self._backend is not None
        out = []
        for index, name in enumerate(self._backend.device_names()):
            powers = [s.power_w for s in samples if s.device == index]
            if not powers:
                raise BaselineFailed(f"{what}: no power reading from GPU {index} ({name}); cannot take a baseline")
            out.append(statistics.fmean(powers))
        return out

    def idle_power_w(self, duration_s: float) -> list[float]:
        """Mean power per device over ``duration_s`` of sampling (nothing else running)."""
        return self._mean_power(self._idle_samples(duration_s, self.sleep), "idle baseline")

    def loaded_idle(self, duration_s: float, sleep: Callable[[float], None]) -> None:
        """The thermal-floor pause, sampled: idle power with the model resident (its CUDA context
        and weights). The GPU is still coming down from warmup at first, so only the second
        half of the pause counts. Without NVML or a pause it just sleeps."""
        if self._backend is None or duration_s <= 0:
            sleep(duration_s)
            return
        samples = self._idle_samples(duration_s, sleep)
        half = samples[0].time_s + (samples[-1].time_s - samples[0].time_s) / 2 if samples else 0.0
        self._loaded_idle_w = self._mean_power([s for s in samples if s.time_s >= half], "loaded idle power")
        self._loaded_idle_s = duration_s / 2

    def measure_baseline(self, config: BaselineConfig, cache_dir: Path | None) -> None:
        """Take (or reuse) the idle baseline; call before the model loads."""
        if self._backend is None:
            self._baseline_note = f"no baseline: {self._reason}"
        elif not config.enabled:
            self._baseline_note = "no baseline: baseline.enabled is false"
        else:
            self._baseline = resolve_baseline(self, config, cache_dir)
            self._baseline_ttl_s = config.cache_ttl_seconds

    def _counters(self) -> list[int | None]:
        assert self._backend is not None
        values: list[int | None] = []
        for index in range(len(self._backend.device_names())):
            try:
                values.append(self._backend.total_energy_mj(index))
            except NvmlUnavailable:
                values.append(None)
        return values

    def _on_step(self, steps: int) -> tuple[list[int | None], float | None]:
        """Counter values read just after the ``steps``-th time every counter moved (at most
        ``MAX_STEP_WAIT_S`` per step), and the time between the last two steps (None where
        fewer than two were seen). A read between steps is up to one step stale: reads taken
        on a step cover the interval between them exactly."""
        values = self._counters()
        seen: list[float] = []
        for _ in range(steps):
            before = values
            for _ in range(round(MAX_STEP_WAIT_S / STEP_POLL_S)):
                self.sleep(STEP_POLL_S)
                values = self._counters()
                if all(v != b for v, b in zip(values, before, strict=True) if b is not None):
                    seen.append(self._clock())
                    break
            else:
                self._aligned = False
                break
        return values, (seen[-1] - seen[-2]) if len(seen) >= 2 else None

    def start(self) -> None:
        self._window_start = self._clock()
        if self._backend is not None:
            self._sampler = Sampler(self._backend, self.interval_s, self._clock)
            self._sampler.sample_once(full=True)  # a reading at the very start of the window
            if self._external is None or not self._external.polls_gpu:  # one poller per device
                self._sampler.start()
            self._aligned = True
            self._start_mj, step = self._on_step(2)  # two steps: the second opens the window, both time one
            self._steps = [step] if step is not None else []
            self._window_start = self._clock()
        if self._external is not None:
            self._external.start()

    def raw_trace(self) -> dict[str, Any] | None:
        """The window's raw NVML readings and counters, as a replay fixture (``LLEM_NVML_TRACE``)."""
        if self._backend is None or self._work is None:
            return None
        return {
            "device_names": self._backend.device_names(),
            "interval_s": self.interval_s,
            "window": [self._window_start, self._window_end],
            "start_mj": self._start_mj,
            "end_mj": self._end_mj,
            "power_readings": [vars(r) for r in _power_readings(self._backend)],
            "counter_step_s": self._steps[0] if self._steps else None,
            "work": {
                "output_tokens": self._work.output_tokens,
                "input_tokens": self._work.input_tokens,
                "n_requests": self._work.n_requests,
                "batch_spans": [list(span) for span in self._work.batch_spans],
                "static_batches": self._work.static_batches,
            },
            "samples": [vars(sample) for sample in self.samples],
        }

    def stop(self, work: WindowWork) -> EnergyReport:
        self._work = work
        external = self._external.stop() if self._external is not None else None
        report = self._nvml_report(work)
        if external is None or self._external is None:
            return report
        return with_external(report, self._external, external, work, self._window_end - self._window_start)

    def _nvml_report(self, work: WindowWork) -> EnergyReport:
        if self._backend is None or self._sampler is None:
            self._window_end = self._clock()
            return EnergyReport(
                energy_j=None, source=None, unavailable_reason=self._reason, baseline_note=self._baseline_note
            )
        end_mj, _ = self._on_step(1)  # the window closes on the step after the work
        self._end_mj = end_mj
        window_end = self._window_end = self._clock()
        self._sampler.sample_once(full=True)  # and one at its very end
        samples = self.samples = self._sampler.stop()
        names = self._backend.device_names()
        baseline = self._baseline
        if baseline is not None and self._loaded_idle_w is not None:
            baseline = baseline.model_copy(
                update={
                    "loaded_power_w": self._loaded_idle_w,
                    "loaded_total_power_w": sum(self._loaded_idle_w),
                    "loaded_duration_s": self._loaded_idle_s,
                    "adjusted_with": "post_load",
                }
            )
        return energy_report(
            names,
            samples,
            start_mj=self._start_mj,
            end_mj=end_mj,
            window=(self._window_start, window_end),
            interval_s=self.interval_s,
            work=work,
            baseline=baseline,
            baseline_ttl_s=self._baseline_ttl_s,
            readings=_power_readings(self._backend),
            counter_step_s=self._steps[0] if self._steps else None,
            counter_aligned=self._aligned,
        ).model_copy(update={"baseline_note": self._baseline_note})  # why there is none (baseline disabled)


def nvml_meter(
    interval_s: float = DEFAULT_INTERVAL_S, sampler: str | None = "auto", only: list[str] | None = None
) -> EnergyMeter:
    """The production meter: real NVML on the run's GPUs (``only``: their UUIDs), plus Zeus or
    CodeCarbon when ``energy_sampler`` asks."""
    return EnergyMeter(
        lambda: NvmlBackend(only).open(), interval_s, external_factory=lambda n: make_sampler(sampler, n)
    )


def disabled_meter() -> EnergyMeter:
    """``energy_sampler: null``: throughput-only runs that never touch NVML."""

    def refuse() -> EnergyBackend:
        raise NvmlUnavailable("energy measurement disabled (energy_sampler: null)")

    return EnergyMeter(refuse)
