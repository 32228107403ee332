"""The only module that talks to NVML: energy counters and one sampler thread.

Energy over a window is the delta of each device's cumulative energy counter (Volta and
newer: ``nvmlDeviceGetTotalEnergyConsumption``, millijoules). The counter moves in steps
(every 10-100 ms by architecture), so the window opens and closes on a step: the meter waits
(at most ``MAX_STEP_WAIT_S``) for the counter to move and reads it then, and reports the step
it saw. One thread samples every device at a fixed interval: power first, stamped device by
device, the slower telemetry (temperature, memory, SM utilisation and clock, throttle reasons)
about once a second. The integrated power trace is reported next to the counter as a
cross-check and becomes the energy source only on devices without a counter. Which power
reading each device gives is recorded: instantaneous where the driver offers it, else
``nvmlDeviceGetPowerUsage``, a one-second average on Ampere (except GA100) and newer, whose
samples are moved half a second back before integrating (the average is centred there). On
Grace Hopper / Blackwell superchips the counter covers the module (GPU + CPU + memory): the
scope is labelled and the trace read at module scope where the driver allows. Devices are the
ones NVML sees in this container, which are exactly the devices the host gave the run.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

from llem_agent.baseline import resolve_baseline
from llem_agent.contract import (
    BaselineConfig,
    BaselineReport,
    DeviceEnergy,
    EnergyReport,
    ExternalEnergyReport,
    GpuFacts,
)
from llem_agent.external import ExternalEnergy, ExternalSampler, make_sampler
from llem_agent.telemetry import (
    Sample,
    WindowFacts,
    device_trace,
    downsample,
    integrate_j,
    max_gap_s,
    power_capped_fraction,
    temperature_slope_c_per_s,
    throttle_events,
    validity_flags,
    window_samples,
    write_parquet,
)

DEFAULT_INTERVAL_S = 0.1
# The slower telemetry fields are read about once a second (power every interval).
SLOW_FIELDS_S = 1.0
# The energy counter's step: the window opens and closes on one, waiting at most this long.
MAX_STEP_WAIT_S = 0.25
STEP_POLL_S = 0.001
# A one-second moving average is centred half a second before the time it is read.
AVERAGE_WINDOW_S = 1.0

PowerKind = Literal["instant", "average_1s"]
Scope = Literal["gpu", "module"]


@dataclass(frozen=True)
class PowerReading:
    """Which power reading a device's trace holds and what its counter and trace cover."""

    kind: PowerKind = "instant"
    counter_scope: Scope = "gpu"
    trace_scope: Scope = "gpu"

    @property
    def shift_s(self) -> float:
        """How far the samples are moved back in time before integrating."""
        return AVERAGE_WINDOW_S / 2 if self.kind == "average_1s" else 0.0


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used here (no driver, no device, or no energy counter)."""


class BaselineFailed(RuntimeError):
    """The idle baseline got no power reading from a device: no baseline rather than 0 W."""


class EnergyBackend(Protocol):
    """What the meter needs from NVML; faked in unit tests."""

    def device_names(self) -> list[str]: ...

    def device_uuids(self) -> list[str]: ...

    def total_energy_mj(self, index: int) -> int: ...

    def read(self, index: int) -> Sample:
        """One full reading of device ``index``, power first; the sampler stamps its time."""

    def read_power(self, index: int) -> float:
        """Device ``index``'s power alone, watts (the fast path of the sampler)."""

    def power_readings(self) -> list[PowerReading]:
        """Which power reading each device gives, and what its counter covers."""

    def facts(self) -> list[GpuFacts]: ...

    def close(self) -> None: ...


def visible_gpu_uuids() -> list[str]:
    """UUIDs of every GPU NVML enumerates here ([] without a driver or a device)."""
    try:
        backend = NvmlBackend().open()
    except NvmlUnavailable:
        return []
    try:
        return backend.device_uuids()
    finally:
        backend.close()


class NvmlBackend:
    """Real NVML, through nvidia-ml-py. Vendor errors become ``NvmlUnavailable`` here only.

    ``only``: the UUIDs of the run's GPUs. NVML enumerates every GPU of the machine whatever
    CUDA_VISIBLE_DEVICES says (a process on the host sees them all), so the meter keeps just
    these; ``[]`` is a CPU run (no GPU is measured), None keeps every device NVML sees.
    """

    def __init__(self, only: list[str] | None = None) -> None:
        self._nvml: Any = None
        self._handles: list[object] = []
        self._names: list[str] = []
        self._only = only
        self._readings: list[PowerReading] = []
        self._indices: list[int] = []

    def open(self) -> NvmlBackend:
        if self._only is not None and not self._only:
            raise NvmlUnavailable("no GPU was given to this run (CPU run)")
        try:
            import pynvml
        except ImportError as exc:
            raise NvmlUnavailable("nvidia-ml-py is not installed") from exc
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            numbered = [(i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
            if self._only is not None:
                wanted = set(self._only)
                numbered = [(i, h) for i, h in numbered if str(pynvml.nvmlDeviceGetUUID(h)) in wanted]
            self._indices = [i for i, _ in numbered]
            self._handles = [h for _, h in numbered]
            self._names = [str(pynvml.nvmlDeviceGetName(h)) for h in self._handles]
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML unavailable: {exc}") from exc
        if not self._handles:
            raise NvmlUnavailable("NVML sees none of this run's GPUs" if self._only else "NVML sees no GPU here")
        self._nvml = pynvml
        self._readings = [self._reading_of(h, name) for h, name in zip(self._handles, self._names, strict=True)]
        return self

    def _field(self, handle: object, field: int, scope: int | None = None) -> float | None:
        """One NVML field value in watts (mW from the driver), or None where it has none."""
        nvml = self._nvml
        try:
            (value,) = nvml.nvmlDeviceGetFieldValues(handle, [field if scope is None else (field, scope)])
        except (nvml.NVMLError, TypeError, ValueError):
            return None
        return float(value.value.uiVal) / 1000.0 if value.nvmlReturn == 0 else None

    def _reading_of(self, handle: object, name: str) -> PowerReading:
        """Instant power where the driver has it, else the averaged one on Ampere (but GA100)
        and newer; module scope on a superchip (C2C link to a Grace CPU)."""
        nvml = self._nvml
        module = False
        with contextlib.suppress(nvml.NVMLError, AttributeError):
            module = bool(nvml.nvmlDeviceGetC2cModeInfoV(handle).isC2cEnabled)
        module = module or any(chip in name for chip in ("GH200", "GB200", "GB300"))
        module_scope = getattr(nvml, "NVML_POWER_SCOPE_MODULE", None)
        instant = getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", None)
        trace_scope: Scope = "gpu"
        if module and module_scope is not None and instant is not None and self._field(handle, instant, module_scope):
            trace_scope = "module"
        kind: PowerKind = "instant"
        if instant is None or self._field(handle, instant) is None:
            kind = "average_1s" if _averages_power_usage(nvml, handle, name) else "instant"
        return PowerReading(kind=kind, counter_scope="module" if module else "gpu", trace_scope=trace_scope)

    def power_readings(self) -> list[PowerReading]:
        return list(self._readings)

    def nvml_indices(self) -> list[int]:
        """The run's GPUs as NVML numbers them in this process (what Zeus is given)."""
        return list(self._indices)

    def device_names(self) -> list[str]:
        return list(self._names)

    def device_uuids(self) -> list[str]:
        return [str(self._nvml.nvmlDeviceGetUUID(h)) for h in self._handles]

    def total_energy_mj(self, index: int) -> int:
        nvml = self._nvml
        try:
            return int(nvml.nvmlDeviceGetTotalEnergyConsumption(self._handles[index]))
        except nvml.NVMLError as exc:
            raise NvmlUnavailable(f"GPU {index} ({self._names[index]}) has no total-energy counter: {exc}") from exc

    def read_power(self, index: int) -> float:
        """The reading :meth:`power_readings` names: instant (module scope on a superchip whose
        driver gives it) where the driver offers it, else ``nvmlDeviceGetPowerUsage``."""
        nvml, handle = self._nvml, self._handles[index]
        reading = self._readings[index] if index < len(self._readings) else PowerReading()
        instant = getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", None)
        if instant is not None and reading.kind == "instant":
            scope = getattr(nvml, "NVML_POWER_SCOPE_MODULE", None) if reading.trace_scope == "module" else None
            watts = self._field(handle, instant, scope)
            if watts is not None:
                return watts
        return float(nvml.nvmlDeviceGetPowerUsage(handle)) / 1000.0

    def read(self, index: int) -> Sample:
        """Power first (required: a failure here is a gap in the trace; the sampler's stamp is
        its time), then each other field on its own, None where this device does not report it
        (utilisation on MIG, clocks on some boards)."""
        power = self.read_power(index)
        nvml, handle = self._nvml, self._handles[index]

        def field(call: Callable[[], Any]) -> Any:
            try:
                return call()
            except nvml.NVMLError:
                return None

        memory = field(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or (
            nvml.nvmlDeviceGetCurrentClocksThrottleReasons
        )
        temperature = field(lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        utilisation = field(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        clock = field(lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM))
        throttle = field(lambda: reasons(handle))
        return Sample(
            time_s=0.0,
            device=index,
            power_w=power,
            temperature_c=None if temperature is None else float(temperature),
            memory_used_mb=None if memory is None else memory.used / 2**20,
            memory_total_mb=None if memory is None else memory.total / 2**20,
            sm_utilisation_pct=None if utilisation is None else float(utilisation.gpu),
            sm_clock_mhz=None if clock is None else float(clock),
            throttle_reasons=None if throttle is None else int(throttle),
        )

    def facts(self) -> list[GpuFacts]:
        nvml = self._nvml

        def ask(call: Callable[[], Any]) -> Any:
            try:
                return call()
            except nvml.NVMLError:
                return None

        driver = ask(nvml.nvmlSystemGetDriverVersion)
        cuda = ask(nvml.nvmlSystemGetCudaDriverVersion_v2)
        cuda_text = f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) else None
        out = []
        for index, handle in enumerate(self._handles):
            limit_mw = ask(partial(nvml.nvmlDeviceGetEnforcedPowerLimit, handle))
            persistence = ask(partial(nvml.nvmlDeviceGetPersistenceMode, handle))
            out.append(
                GpuFacts(
                    index=index,
                    name=self._names[index],
                    uuid=str(ask(partial(nvml.nvmlDeviceGetUUID, handle))),
                    driver_version=str(driver) if driver is not None else None,
                    cuda_driver_version=cuda_text,
                    power_limit_w=limit_mw / 1000.0 if limit_mw is not None else None,
                    persistence_mode=bool(persistence) if persistence is not None else None,
                )
            )
        return out

    def close(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError if self._nvml else Exception):
            if self._nvml is not None:
                self._nvml.nvmlShutdown()


def _averages_power_usage(nvml: Any, handle: object, name: str) -> bool:
    """Whether ``nvmlDeviceGetPowerUsage`` is a one-second average here: on Ampere and newer,
    except GA100 (A100, A30, A800), whose reading is instantaneous, as on Volta and Turing."""
    try:
        arch = int(nvml.nvmlDeviceGetArchitecture(handle))
    except (nvml.NVMLError, AttributeError, TypeError, ValueError):
        return False  # unknown: said as instant, as the driver documents the call
    ampere = int(getattr(nvml, "NVML_DEVICE_ARCH_AMPERE", 7))
    ga100 = any(chip in name for chip in ("A100", "A30", "A800"))
    return arch >= ampere and not ga100


def _nvml_indices(backend: EnergyBackend) -> list[int]:
    """The backend's devices as NVML numbers them in this process (a fake: 0..n-1)."""
    indices = getattr(backend, "nvml_indices", None)
    return list(indices()) if indices is not None else list(range(len(backend.device_names())))


def _power_readings(backend: EnergyBackend) -> list[PowerReading]:
    """The backend's readings (a fake without the method: instantaneous, GPU scope)."""
    readings = getattr(backend, "power_readings", None)
    return list(readings()) if readings is not None else [PowerReading() for _ in backend.device_names()]


class Sampler:
    """One thread that reads every device each interval; never two pollers on one device."""

    def __init__(self, backend: EnergyBackend, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self.interval_s = interval_s
        self.clock = clock
        self.samples: list[Sample] = []
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
                if full or power_only is None:
                    self.samples.append(replace(self.backend.read(index), time_s=now, device=index))
                else:
                    self.samples.append(Sample(time_s=now, device=index, power_w=float(power_only(index))))

    def _run(self) -> None:
        while not self._stop.is_set():
            started = self.clock()
            self.sample_once()
            self._stop.wait(max(0.0, self.interval_s - (self.clock() - started)))


@dataclass(frozen=True)
class WindowWork:
    """What happened in the window, for the per-unit energies and the attribution."""

    output_tokens: int
    input_tokens: int
    n_requests: int
    # (start, first token, end) of each batch, seconds since the window opened.
    batch_spans: list[tuple[float, float, float]]
    # Every batch prefilled all its requests before its first token (static batching); False
    # where prefill and decode interleave (continuous batching: vLLM, TensorRT-LLM).
    static_batches: bool = True


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


# A prefill is resolved by the trace only where it spans this many sampling intervals.
MIN_PREFILL_SAMPLES = 5


def _shifted(trace: list[Sample], shift_s: float) -> list[Sample]:
    """The trace with its samples moved ``shift_s`` back (an average read at t describes t - shift)."""
    return trace if not shift_s else [replace(s, time_s=s.time_s - shift_s) for s in trace]


def phase_split(
    traces: list[list[Sample]], window: tuple[float, float], interval_s: float, work: WindowWork, instant: bool
) -> tuple[float | None, float | None, str]:
    """Prefill and decode energy from the trace, where that is a measurement, and how it was
    obtained or why it is not: each batch's wait for its first token integrated (prefill) and
    the rest of it (decode), only for static batches (for continuous batching "prefill" would
    end at the first request's first token), instantaneous power readings, and prefills of at
    least ``MIN_PREFILL_SAMPLES`` sampling intervals (a 30 ms prefill against 100 ms samples
    is interpolation)."""
    start = window[0]
    spans = work.batch_spans
    if not spans:
        return None, None, "no batch was measured"
    if not work.static_batches:
        return None, None, "not measured: continuous batching interleaves one request's prefill with others' decode"
    if not instant:
        return None, None, "not measured: the power readings are one-second averages, too coarse for a prefill"
    shortest = min(f - s for s, f, _ in spans)
    if shortest < MIN_PREFILL_SAMPLES * interval_s:
        return (
            None,
            None,
            (
                f"not measured: the shortest prefill ({shortest * 1000:.0f} ms) spans fewer than {MIN_PREFILL_SAMPLES} "
                f"samples of {interval_s * 1000:.0f} ms"
            ),
        )
    prefill = sum(integrate_j(t, start + s, start + f) for t in traces for s, f, _ in spans)
    decode = sum(integrate_j(t, start + f, start + e) for t in traces for _, f, e in spans)
    return (
        prefill,
        decode,
        (
            f"power trace over each batch's wait for its first token (static batches; prefills of at least "
            f"{shortest:.2f} s against {interval_s * 1000:.0f} ms samples)"
        ),
    )


def energy_report(
    names: list[str],
    samples: list[Sample],
    *,
    start_mj: list[int | None],
    end_mj: list[int | None],
    window: tuple[float, float],
    interval_s: float,
    work: WindowWork,
    baseline: BaselineReport | None = None,
    baseline_ttl_s: float | None = None,
    readings: list[PowerReading] | None = None,
    counter_step_s: float | None = None,
    counter_aligned: bool = True,
) -> EnergyReport:
    """The window's energy from counter deltas and the sampled trace (a pure function).

    Each device contributes its counter delta, or its integrated power where it has no
    counter or the counter went backwards (flagged). A device whose power readings are
    one-second averages has its samples moved back half a second before integrating (the
    average is centred there), which corrects the half second of (load - idle) power the
    lagging readings would otherwise shift out of the window. Counter and trace are compared
    only where both cover the same thing (a superchip's counter covers the module). Prefill and
    decode energy: :func:`phase_split`.
    """
    start, end = window
    readings = readings or [PowerReading() for _ in names]
    devices: list[DeviceEnergy] = []
    traces: list[list[Sample]] = []
    monotonic = True
    all_counters = True
    compared_counter = compared_trace = 0.0
    for index, name in enumerate(names):
        reading = readings[index]
        trace = _shifted(device_trace(samples, index), reading.shift_s)
        traces.append(trace)
        inside = window_samples(trace, start, end)
        a, b = start_mj[index], end_mj[index]
        counter_j: float | None = None
        if a is not None and b is not None:
            if b < a:
                monotonic = False
            else:
                counter_j = (b - a) / 1000.0
        all_counters &= counter_j is not None
        trace_j = integrate_j(trace, start, end) if trace else None
        if counter_j is not None and trace_j is not None and reading.counter_scope == reading.trace_scope:
            compared_counter += counter_j
            compared_trace += trace_j
        devices.append(
            DeviceEnergy(
                index=index,
                name=name,
                energy_j=counter_j,
                trace_energy_j=trace_j,
                mean_power_w=(sum(s.power_w for s in inside) / len(inside)) if inside else None,
                peak_power_w=max((s.power_w for s in inside), default=None),
                power_reading=reading.kind,
                trace_shift_s=reading.shift_s,
                counter_scope=reading.counter_scope,
                trace_scope=reading.trace_scope,
            )
        )
    used = [d.energy_j if d.energy_j is not None else d.trace_energy_j for d in devices]
    if any(u is None for u in used):
        reason = "the energy counter went backwards" if not monotonic else "no counter and no power samples"
        return EnergyReport(energy_j=None, source=None, unavailable_reason=reason, devices=devices)
    energy = float(sum(u for u in used if u is not None))
    duration = end - start
    mean_power = energy / duration if duration > 0 else None
    in_window = window_samples([s for t in traces for s in t], start, end)
    prefill, decode, split_note = phase_split(
        traces, window, interval_s, work, instant=all(r.kind == "instant" for r in readings)
    )
    facts = WindowFacts(
        duration_s=duration,
        interval_s=interval_s,
        counter_j=compared_counter or None,
        trace_j=compared_trace if compared_counter else None,
        counter_monotonic=monotonic,
        max_gap_s=max(max_gap_s(device_trace(samples, i), start, end) for i in range(len(names))),
        throttle_events=throttle_events(in_window),
        baseline_age_s=None if baseline is None else baseline.age_s + duration,
        baseline_ttl_s=baseline_ttl_s,
        temperature_slope_c_per_s=max(
            temperature_slope_c_per_s(window_samples(device_trace(samples, i), start, end)) for i in range(len(names))
        ),
    )
    tokens = work.output_tokens + work.input_tokens
    # Each end read within one poll of its step where aligned, else anywhere within a step.
    edge_s = 2 * (STEP_POLL_S if counter_aligned else (counter_step_s or MAX_STEP_WAIT_S))
    return EnergyReport(
        energy_j=energy,
        source="nvml_total_energy" if all_counters else "nvml_power_trace",
        devices=devices,
        trace_energy_j=sum(d.trace_energy_j or 0.0 for d in devices),
        j_per_output_token=energy / work.output_tokens if work.output_tokens else None,
        j_per_token=energy / tokens if tokens else None,
        j_per_request=energy / work.n_requests if work.n_requests else None,
        mean_power_w=mean_power,
        peak_power_w=_peak_total_power(in_window, start, interval_s),
        prefill_energy_j=prefill,
        decode_energy_j=decode,
        prefill_decode_note=split_note,
        sample_interval_s=interval_s,
        n_samples=len(in_window),
        power_capped_fraction=power_capped_fraction(in_window),
        flags=validity_flags(facts),
        baseline=baseline,
        adjusted_energy_j=None if baseline is None else energy - baseline.subtracted_power_w * duration,
        counter_step_s=counter_step_s,
        counter_aligned=counter_aligned if all_counters else None,
        energy_uncertainty_j=edge_s * mean_power + 0.002 * len(names) if all_counters and mean_power else None,
    )


# Flags about llem's own trace that mean nothing while another tool does the polling.
_TRACE_FLAGS = frozenset({"sampling_gap", "counter_trace_disagree"})


def with_external(
    report: EnergyReport, sampler: ExternalSampler, measured: ExternalEnergy, work: WindowWork, duration_s: float
) -> EnergyReport:
    """The run's energy from the optional sampler, llem's own counter and trace kept beside it."""
    energy = measured.energy_j
    external = ExternalEnergyReport(
        sampler=sampler.name,  # type: ignore[arg-type]
        version=measured.version,
        energy_j=energy,
        parts_j=measured.parts_j,
        note=measured.note,
    )
    if energy is None:
        return report.model_copy(update={"external": external})
    tokens = work.output_tokens + work.input_tokens
    update: dict[str, object] = {
        "energy_j": energy,
        "source": sampler.name,
        "unavailable_reason": None,
        "external": external,
        "j_per_output_token": energy / work.output_tokens if work.output_tokens else None,
        "j_per_token": energy / tokens if tokens else None,
        "j_per_request": energy / work.n_requests if work.n_requests else None,
        "mean_power_w": energy / duration_s if duration_s > 0 else None,
    }
    baseline = report.baseline
    if sampler.polls_gpu:
        # llem's sampler was off (CodeCarbon polled): no trace to split or cross-check, and the
        # GPU idle baseline does not describe a GPU + CPU + RAM total.
        update |= {
            "flags": [f for f in report.flags if f.code not in _TRACE_FLAGS],
            "trace_energy_j": None,
            "prefill_energy_j": None,
            "decode_energy_j": None,
            "prefill_decode_note": "not measured: CodeCarbon polled the GPUs, so llem kept no power trace",
            "adjusted_energy_j": None,
            "baseline_note": "not subtracted: the baseline is GPU idle power, CodeCarbon's total covers GPU, CPU "
            "and RAM"
            if baseline
            else report.baseline_note,
        }
    elif baseline is not None:
        update["adjusted_energy_j"] = energy - baseline.subtracted_power_w * duration_s
    return report.model_copy(update=update)


def _peak_total_power(samples: list[Sample], start_s: float, interval_s: float) -> float | None:
    """Highest sum of all devices' power within one sampling interval (each device is stamped
    on its own read, so one sweep's readings differ by a few milliseconds)."""
    totals: dict[int, dict[int, float]] = {}
    for s in samples:
        bucket = round((s.time_s - start_s) / interval_s) if interval_s > 0 else 0
        totals.setdefault(bucket, {})[s.device] = s.power_w
    return max((sum(by_device.values()) for by_device in totals.values()), default=None)


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
