"""Simulated GPUs on the host: ``llem run --simulate-gpus SPEC``, or ``LLEM_SIMULATE_GPUS=SPEC``
for every command and worker (the flag sets the variable for its command and what it starts).

SPEC is ``N`` simulated GPUs, then optional ``,KEY=VALUE`` settings of their power profile and
faults to inject::

    2                               two simulated GPUs, the default H100-like profile
    1,reading=instant,step=0.02     instantaneous power readings, a 20 ms energy counter
    1,idle=60,loaded=95,load=400    the three power levels, watts
    1,fault=counter_reset@1.5       a fault, 1.5 s after the window's first batch
    1,fault=sampling_gap:2@1        power readings fail for 2 s, from 1 s in
    1,fault=unsupported:energy      a device without an energy counter (or temperature, clock, ...)
    1,fault=counter_bias:0.1        the counter over-counts by 10 %
    1,fault=temperature_drift:2     the temperature climbs 2 C/s
    1,fault=throttling,fault=device_lost@3

The host's NVML seam (``devices.read_nvml``) then lists these GPUs (stable ``GPU-SIM-`` UUIDs,
the model name ``llem simulated GPU (H100-like)``), so locks, slots, assignment and ``--parallel``
treat them as GPUs; each run is given no NVIDIA device but this description (read-only), and its
agent's NVML is a simulator. Nothing is simulated unless SPEC is given, and everything that is
says so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from llem_agent.contract.simulation import PowerProfile, SimulatedDevice, SimulatedFault, SimulatedGpus, simulated_uuid

from .errors import ConfigError

SIMULATE_ENV = "LLEM_SIMULATE_GPUS"
SIMULATION_FILE = "simulated-gpus.json"  # in the study directory, mounted read-only into each run
MAX_SIMULATED_GPUS = 64
# SPEC's keys and the profile field each sets.
PROFILE_KEYS = {
    "reading": "power_reading",
    "step": "counter_step_s",
    "idle": "idle_w",
    "loaded": "loaded_idle_w",
    "load": "load_w",
    "response": "response_s",
}
# A fault's ``:ARG``: which field it takes.
FAULT_ARG = {
    "unsupported": "field",
    "sampling_gap": "duration_s",
    "counter_bias": "amount",
    "temperature_drift": "amount",
}


def _number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a number") from None


def _fault(text: str, where: str) -> dict[str, Any]:
    """``NAME[:ARG][@AT_S]`` as a fault's fields."""
    head, _, at = text.partition("@")
    kind, _, arg = head.partition(":")
    fault: dict[str, Any] = {"kind": kind}
    if at:
        fault["at_s"] = _number(at, where)
    if arg:
        if kind not in FAULT_ARG:
            raise ConfigError(f"{where}: fault {kind} takes no argument, got :{arg}")
        field = FAULT_ARG[kind]
        fault[field] = arg if field == "field" else _number(arg, where)
    elif kind == "unsupported":
        raise ConfigError(f"{where}: fault unsupported names its field, e.g. unsupported:energy")
    return fault


def parse_spec(spec: str, where: str = f"--simulate-gpus / {SIMULATE_ENV}") -> SimulatedGpus:
    """The simulated GPUs SPEC describes; a ConfigError in one line when it describes none."""
    where = f"{where} {spec!r}"
    count, *settings = [part.strip() for part in spec.split(",")]
    if not count.isdigit() or not 1 <= int(count) <= MAX_SIMULATED_GPUS:
        raise ConfigError(f"{where}: expects the number of GPUs (1-{MAX_SIMULATED_GPUS}) first, e.g. 2")
    profile: dict[str, Any] = {}
    faults: list[dict[str, Any]] = []
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not value:
            raise ConfigError(f"{where}: expects KEY=VALUE after the number, got {setting!r}")
        if key == "fault":
            faults.append(_fault(value, where))
        elif key == "reading":
            profile["power_reading"] = value
        elif key in PROFILE_KEYS:
            profile[PROFILE_KEYS[key]] = _number(value, where)
        else:
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {', '.join([*PROFILE_KEYS, 'fault'])})")
    try:
        return SimulatedGpus(
            devices=[SimulatedDevice(index=i, uuid=simulated_uuid(i)) for i in range(int(count))],
            profile=PowerProfile.model_validate(profile),
            faults=[SimulatedFault.model_validate(f) for f in faults],
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        at = ".".join(str(p) for p in error["loc"])
        raise ConfigError(f"{where}: {at + ': ' if at else ''}{error['msg']}") from None


def simulated_gpus(environ: Mapping[str, str] | None = None) -> SimulatedGpus | None:
    """The simulated GPUs this process was asked for (``LLEM_SIMULATE_GPUS``), or None: real ones."""
    spec = (os.environ if environ is None else environ).get(SIMULATE_ENV)
    if spec is None or not spec.strip():
        return None
    return parse_spec(spec, SIMULATE_ENV)
