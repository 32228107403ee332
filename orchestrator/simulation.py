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
    1,reading=instant,trace=gpu.json   a recorded NVML trace drives the power from the window on

The host's NVML seam (``devices.read_nvml``) then lists these GPUs (stable ``GPU-SIM-`` UUIDs,
the model name ``llem simulated GPU (H100-like)``), so locks, slots, assignment and ``--parallel``
treat them as GPUs; each run is given no NVIDIA device but this description (read-only), and its
agent's NVML is a simulator. Nothing is simulated unless SPEC is given, and everything that is
says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llem_agent.contract.simulation import (
    PowerProfile,
    SimulatedDevice,
    SimulatedFault,
    SimulatedGpus,
    recorded_trace,
    simulated_uuid,
)

from .errors import ConfigError

SIMULATE_ENV = "LLEM_SIMULATE_GPUS"
SIMULATION_FILE = "simulated-gpus.json"  # in the study directory, mounted read-only into each run
MAX_SIMULATED_GPUS = 64
MAX_TRACE_BYTES = 16 << 20  # a recorded trace of a window: 10 Hz for hours is far less
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
        elif key == "trace":
            read_trace(value, where)
        elif key == "reading":
            profile["power_reading"] = value
        elif key in PROFILE_KEYS:
            profile[PROFILE_KEYS[key]] = _number(value, where)
        else:
            known = ", ".join([*PROFILE_KEYS, "fault", "trace"])
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {known})")
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


def read_trace(path: str, where: str = f"--simulate-gpus / {SIMULATE_ENV}") -> str:
    """The text of the recorded trace at ``path`` (``trace=PATH``), checked; a ConfigError in one
    line when it is not one."""
    file = Path(path).expanduser()
    try:
        with file.open("rb") as handle:
            data = handle.read(MAX_TRACE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: trace {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_TRACE_BYTES:
        raise ConfigError(f"{where}: trace {path} is larger than {MAX_TRACE_BYTES >> 20} MiB")
    try:
        recorded_trace(json.loads(data))
    except ValueError as exc:  # json's errors are ValueErrors too
        raise ConfigError(f"{where}: trace {path}: {str(exc).splitlines()[0]}") from None
    return data.decode()


def simulated_trace(environ: Mapping[str, str] | None = None) -> str | None:
    """The recorded trace's text that ``trace=PATH`` of ``LLEM_SIMULATE_GPUS`` names, or None."""
    spec = (os.environ if environ is None else environ).get(SIMULATE_ENV) or ""
    paths = [p.strip()[len("trace=") :] for p in spec.split(",")[1:] if p.strip().startswith("trace=")]
    return read_trace(paths[-1], SIMULATE_ENV) if paths else None
