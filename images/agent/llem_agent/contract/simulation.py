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
