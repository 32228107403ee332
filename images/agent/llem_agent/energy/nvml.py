"""The only module that talks to NVML: each device's energy counter and power readings.

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

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Protocol

from llem_agent.contract import GpuFacts
from llem_agent.energy.errors import NvmlUnavailable, gpu_lost_errors, import_vendor, nvml_errors, nvml_optional
from llem_agent.telemetry import Sample

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
    """Real NVML, through nvidia-ml-py; its errors become llem's through ``energy.errors``.

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
        pynvml = import_vendor("pynvml", NvmlUnavailable("nvidia-ml-py is not installed"))
        with nvml_errors(pynvml, "NVML unavailable"):
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            numbered = [(i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
            if self._only is not None:
                wanted = set(self._only)
                numbered = [(i, h) for i, h in numbered if str(pynvml.nvmlDeviceGetUUID(h)) in wanted]
            self._indices = [i for i, _ in numbered]
            self._handles = [h for _, h in numbered]
            self._names = [str(pynvml.nvmlDeviceGetName(h)) for h in self._handles]
        if not self._handles:
            raise NvmlUnavailable("NVML sees none of this run's GPUs" if self._only else "NVML sees no GPU here")
        self._nvml = pynvml
        self._readings = [self._reading_of(h, name) for h, name in zip(self._handles, self._names, strict=True)]
        return self

    def _field(self, handle: object, field: int, scope: int | None = None) -> float | None:
        """One NVML field value in watts (mW from the driver), or None where it has none."""
        nvml = self._nvml

        def one() -> Any:
            (value,) = nvml.nvmlDeviceGetFieldValues(handle, [field if scope is None else (field, scope)])
            return value

        value = nvml_optional(nvml, one, TypeError, ValueError)
        if value is None:
            return None
        return float(value.value.uiVal) / 1000.0 if value.nvmlReturn == 0 else None

    def _reading_of(self, handle: object, name: str) -> PowerReading:
        """Instant power where the driver has it, else the averaged one on Ampere (but GA100)
        and newer; module scope on a superchip (C2C link to a Grace CPU)."""
        nvml = self._nvml
        module = bool(nvml_optional(nvml, lambda: nvml.nvmlDeviceGetC2cModeInfoV(handle).isC2cEnabled, AttributeError))
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
        nvml, gpu = self._nvml, f"GPU {index} ({self._names[index]})"
        with nvml_errors(nvml, f"{gpu} has no total-energy counter"), gpu_lost_errors(nvml, gpu):
            return int(nvml.nvmlDeviceGetTotalEnergyConsumption(self._handles[index]))

    def read_power(self, index: int) -> float:
        """The reading :meth:`power_readings` names: instant (module scope on a superchip whose
        driver gives it) where the driver offers it, else ``nvmlDeviceGetPowerUsage``. A lost GPU
        raises ``DeviceLost``; any other failure is the driver's error (a gap in the trace)."""
        with gpu_lost_errors(self._nvml, f"GPU {index} ({self._names[index]})"):
            return self._read_power(index)

    def _read_power(self, index: int) -> float:
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
            return nvml_optional(nvml, call)

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
            return nvml_optional(nvml, call)

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
        if self._nvml is not None:
            nvml_optional(self._nvml, self._nvml.nvmlShutdown)


def _averages_power_usage(nvml: Any, handle: object, name: str) -> bool:
    """Whether ``nvmlDeviceGetPowerUsage`` is a one-second average here: on Ampere and newer,
    except GA100 (A100, A30, A800), whose reading is instantaneous, as on Volta and Turing."""
    unknown = (AttributeError, TypeError, ValueError)
    arch = nvml_optional(nvml, lambda: int(nvml.nvmlDeviceGetArchitecture(handle)), *unknown)
    if arch is None:
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
