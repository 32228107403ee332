"""The description of simulated GPUs: what ``llem run --simulate-gpus N`` hands the agent.

The host writes it once per study (``simulated-gpus.json`` in the study directory) and gives
each run the path where its agent sees it (``RunRequest.simulated_gpus``: a read-only mount in a
container, the host's file for the local runner). The agent's NVML seam then becomes a simulator
of these devices, driven by the agent's own phases (``llem_agent.simulation``). Nothing it reports
is a measurement: every result of such a run says ``environment.gpus_simulated``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SIMULATION_KIND: Literal["llem.simulated_gpus"] = "llem.simulated_gpus"
SIMULATED_UUID_PREFIX = "GPU-SIM-"
SIMULATED_NAME = "llem simulated GPU (H100-like)"
SIMULATED_DRIVER = "simulated"
# What the agent writes beside its result: the simulator's ground truth (true joules per interval).
SIMULATION_LEDGER_FILE = "simulation.json"
# The simulated counterpart of the NVIDIA runtime's device injection: in a container, the UUIDs of
# the simulated GPUs it was given (its simulated NVML enumerates only those).
SIMULATED_DEVICES_ENV = "LLEM_SIMULATED_DEVICES"
# ``--simulate-gpus N,trace=PATH``: the recorded trace, beside the description (the same folder,
# read-only in a container), in the format ``make gpu-check`` keeps (``EnergyMeter.raw_trace``).
SIMULATION_TRACE_FILE = "simulated-trace.json"

FaultKind = Literal[
    "unsupported",  # a field the device does not report (``field``): energy, temperature, clock, ...
    "counter_reset",  # the energy counter restarts from zero inside the window
    "counter_bias",  # the counter over-counts by ``amount`` (a fraction): counter and trace disagree
    "sampling_gap",  # power readings fail for ``duration_s``
    "throttling",  # thermal slowdown: lower clocks and power, clock-event reason 0x20
    "temperature_drift",  # the temperature climbs ``amount`` C/s
    "device_lost",  # every NVML call fails from then on (the GPU fell off the bus)
]
UnsupportedField = Literal["energy", "temperature", "clock", "utilisation", "memory", "power_limit"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SimulatedDevice(_Strict):
    """One simulated GPU as the host's NVML seam lists it."""

    index: int = Field(ge=0)
    uuid: str = Field(pattern=r"^GPU-SIM-[0-9a-f-]+$")
    name: str = SIMULATED_NAME
    memory_mb: float = Field(default=81559.0, gt=0)
    power_limit_w: float = Field(default=700.0, gt=0)


class PowerProfile(_Strict):
    """How a simulated GPU draws power: idle before the model loads, loaded idle with the model
    resident, load while a batch runs; power follows these levels with a first-order lag."""

    idle_w: float = Field(default=70.0, gt=0)
    loaded_idle_w: float = Field(default=110.0, gt=0)
    load_w: float = Field(default=380.0, gt=0)
    response_s: float = Field(default=0.25, gt=0, le=60, description="time constant of power following load")
    counter_step_s: float = Field(default=0.1, gt=0, le=0.2, description="how often the energy counter advances")
    power_reading: Literal["instant", "average_1s"] = "average_1s"
    ambient_c: float = 30.0
    c_per_w: float = Field(default=0.1, ge=0, description="temperature above ambient per watt")
    thermal_s: float = Field(default=60.0, gt=0, description="temperature follows the mean power over this long")
    idle_clock_mhz: float = 345.0
    max_clock_mhz: float = 1980.0
    throttle_factor: float = Field(default=0.8, gt=0, le=1, description="power and clocks under throttling")


class SimulatedFault(_Strict):
    """A fault on request, timed from the first batch of the measured window (``at_s``)."""

    kind: FaultKind
    at_s: float = Field(default=0.0, ge=0)
    duration_s: float | None = Field(default=None, gt=0, description="sampling_gap: how long (default 1 s)")
    field: UnsupportedField | None = None
    amount: float | None = Field(default=None, description="counter_bias: fraction; temperature_drift: C/s")


class SimulatedGpus(_Strict):
    """Every simulated GPU of the study, their power profile and the faults to inject."""

    kind: Literal["llem.simulated_gpus"] = SIMULATION_KIND
    devices: list[SimulatedDevice] = Field(min_length=1, max_length=64)
    profile: PowerProfile = Field(default_factory=PowerProfile)
    faults: list[SimulatedFault] = Field(default_factory=list, max_length=16)


def simulated_uuid(index: int) -> str:
    """A stable UUID that says it is simulated: ``GPU-SIM-00000000-0000-0000-0000-000000000003``."""
    return f"{SIMULATED_UUID_PREFIX}00000000-0000-0000-0000-{index:012d}"


def is_simulated_uuid(uuid: str) -> bool:
    return uuid.upper().startswith(SIMULATED_UUID_PREFIX)


class RecordedTrace(_Strict):
    """A recorded power trace (``EnergyMeter.raw_trace``'s format, the fixture ``make gpu-check``
    keeps): one device's readings (``times_s``, ``power_w``) and the window they were taken in."""

    times_s: tuple[float, ...]
    power_w: tuple[float, ...]
    window_s: tuple[float, float]


INF = float("inf")


def recorded_trace(raw: object, device: int = 0) -> RecordedTrace:
    """Device ``device``'s readings of a raw trace; a ValueError in one line when it holds none."""
    if not isinstance(raw, dict) or not isinstance(raw.get("samples"), list):
        raise ValueError("not a recorded NVML trace: expects an object with samples (EnergyMeter.raw_trace)")
    window = raw.get("window")
    if not (isinstance(window, list) and len(window) == 2 and all(isinstance(w, int | float) for w in window)):
        raise ValueError("recorded trace: window must be [start_s, end_s]")
    points = []
    for sample in raw["samples"]:
        if isinstance(sample, dict) and sample.get("device", 0) == device:
            t, p = sample.get("time_s"), sample.get("power_w")
            if not isinstance(t, int | float) or not isinstance(p, int | float) or not (abs(t) < INF and 0 <= p < INF):
                raise ValueError(f"recorded trace: sample {sample!r} has no finite time_s and power_w >= 0")
            points.append((float(t), float(p)))
    points.sort()
    if len(points) < 2 or any(points[i + 1][0] <= points[i][0] for i in range(len(points) - 1)):
        raise ValueError(f"recorded trace: device {device} needs two or more samples at distinct times")
    start, end = float(window[0]), float(window[1])
    if not points[0][0] <= start < end <= points[-1][0]:
        raise ValueError(f"recorded trace: its samples ({points[0][0]}-{points[-1][0]} s) do not cover its window")
    return RecordedTrace(
        times_s=tuple(t for t, _ in points), power_w=tuple(p for _, p in points), window_s=(start, end)
    )
