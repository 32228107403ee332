"""The run's GPUs as an energy source: counter reads on the counter's steps and a power/thermal
trace through NVML, the idle baseline before the model loads and the loaded idle after warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llem_agent.baseline import resolve_baseline
from llem_agent.contract import BaselineConfig, BaselineReport, EnergyReport, GpuFacts
from llem_agent.energy.errors import BaselineFailed, DeviceLost, NvmlUnavailable
from llem_agent.energy.nvml import (
    DEFAULT_INTERVAL_S,
    MAX_STEP_WAIT_S,
    STEP_POLL_S,
    EnergyBackend,
    _nvml_indices,
    _power_readings,
)
from llem_agent.energy.report import energy_report
from llem_agent.energy.sampler import Sampler
from llem_agent.energy.source import Window, WindowWork, written
from llem_agent.telemetry import Sample, downsample, window_samples, write_parquet


class NvmlSource:
    """The GPUs' energy: each counter's delta over a window that opens and closes on a step of
    the counters, and the power trace of one sampler thread beside it.

    When NVML is missing the source still works and reports ``energy_j=None`` with the
    reason, so a CPU run is never mistaken for a 0 J run.
    """

    polls_gpu = True  # its sampler thread, unless another source polls them (own_poller)

    def __init__(
        self,
        backend_factory: Callable[[], EnergyBackend],
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._factory = backend_factory
        self.interval_s = interval_s
        self._clock = clock
        # False where another source samples the GPUs (one poller per device): the trace is
        # then just the window's first and last reading.
        self.own_poller = True
        self._backend: EnergyBackend | None = None
        self._reason: str | None = None
        self._sampler: Sampler | None = None
        self._start_mj: list[int | None] = []
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

    def open(self) -> NvmlSource:
        try:
            self._backend = self._factory()
        except NvmlUnavailable as exc:
            self._reason = str(exc)
        return self

    def nvml_indices(self) -> list[int]:
        """The run's GPUs as NVML numbers them in this process ([] without NVML)."""
        return _nvml_indices(self._backend) if self._backend is not None else []

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()
        if self._backend is not None:
            self._backend.close()

    def write_telemetry(self, path: Path, window: Window) -> bool:
        """The window's trace at 1 Hz as a Parquet sidecar; False when there is nothing to write."""
        inside = window_samples(self.samples, window.start, window.end)
        if not inside:
            return False
        write_parquet(downsample(inside, window.start), path)
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
            if sampler.lost is not None:
                raise sampler.lost
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
            except DeviceLost:
                raise  # gone for good: the run fails (close() stops the sampler)
            except NvmlUnavailable:
                values.append(None)  # no counter on this device: the trace is its energy
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

    def start(self, window: Window) -> None:
        window.start = self._clock()
        if self._backend is not None:
            self._sampler = Sampler(self._backend, self.interval_s, self._clock)
            self._sampler.sample_once(full=True)  # a reading at the very start of the window
            if self.own_poller:
                self._sampler.start()
            self._aligned = True
            self._start_mj, step = self._on_step(2)  # two steps: the second opens the window, both time one
            self._steps = [step] if step is not None else []
            window.start = self._clock()

    def stop(self, window: Window) -> None:
        if self._backend is None or self._sampler is None:
            window.end = self._clock()
            return
        self._end_mj, _ = self._on_step(1)  # the window closes on the step after the work
        window.end = self._clock()
        self._sampler.sample_once(full=True)  # and one at its very end
        self.samples = self._sampler.stop()
        if self._sampler.lost is not None:  # a GPU that left mid-window: no energy to report
            raise self._sampler.lost

    def measured(self, report: EnergyReport, work: WindowWork, window: Window) -> EnergyReport:
        self._work = work
        return report.model_copy(update=written(self._report(work, window)))

    def _report(self, work: WindowWork, window: Window) -> EnergyReport:
        if self._backend is None or self._sampler is None:
            return EnergyReport(
                energy_j=None, source=None, unavailable_reason=self._reason, baseline_note=self._baseline_note
            )
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
            self._backend.device_names(),
            self.samples,
            start_mj=self._start_mj,
            end_mj=self._end_mj,
            window=(window.start, window.end),
            interval_s=self.interval_s,
            work=work,
            baseline=baseline,
            baseline_ttl_s=self._baseline_ttl_s,
            readings=_power_readings(self._backend),
            counter_step_s=self._steps[0] if self._steps else None,
            counter_aligned=self._aligned,
        ).model_copy(update={"baseline_note": self._baseline_note})  # why there is none (baseline disabled)

    def raw_trace(self, window: Window) -> dict[str, Any] | None:
        """The window's raw NVML readings and counters, as a replay fixture (``LLEM_NVML_TRACE``)."""
        if self._backend is None or self._work is None:
            return None
        return {
            "device_names": self._backend.device_names(),
            "interval_s": self.interval_s,
            "window": [window.start, window.end],
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
