"""The simulator's ground truth: the true joules of every interval of a simulated run.

Written beside the result as ``simulation.json``. Times are seconds on the agent's monotonic
clock (the meter's), so the window the meter reports can be looked up exactly. What it holds:

- ``phases``: each agent phase, its span and true energy and mean power per device;
- ``thermal_floor``: the pause after warm-up, and the true mean power of its second half (what
  the harness averages as the loaded idle power);
- ``window``: the meter's window, its true energy per device, the energy between the counter
  steps it opened and closed on (what a fault-free counter shows), and its peak power;
- ``truth``: the figures a result should report: ``energy_j``, ``adjusted_energy_j`` (above the
  loaded idle, as the harness subtracts it), ``j_per_output_token``, the idle and loaded idle
  power per device.
"""

from __future__ import annotations

import itertools
from typing import Any

from llem_agent.energy.simulated import SimulatedNvml

LEDGER_KIND = "llem.simulation_ledger"
NOT_A_MEASUREMENT = "simulated GPUs: every figure here is the simulator's ground truth, not a measurement"


def _phases(sim: SimulatedNvml, now: float) -> list[dict[str, Any]]:
    out = []
    ends = [t for _, t in sim.phases[1:]] + [now]
    for (name, start), end in zip(sim.phases, ends, strict=True):
        energy = sim.curve.between_j(start, end)
        out.append(
            {
                "phase": name,
                "start_s": start,
                "end_s": end,
                "energy_j": [energy for _ in sim.devices],
                "mean_power_w": [sim.curve.mean_w(start, end) for _ in sim.devices],
            }
        )
    return out


def _thermal_floor(sim: SimulatedNvml) -> dict[str, Any] | None:
    """From the end of warm-up's last batch (or warm-up's start) to the start of the measure phase."""
    starts = dict(sim.phases)
    if "warmup" not in starts or "measure" not in starts:
        return None
    begin, end = starts["warmup"], starts["measure"]
    warm = [b for b in sim.batches if begin <= b[0] < end]
    start = warm[-1][1] if warm else begin
    middle = start + (end - start) / 2
    return {
        "start_s": start,
        "end_s": end,
        "second_half_mean_power_w": [sim.curve.mean_w(middle, end) for _ in sim.devices],
    }


def _window(sim: SimulatedNvml, start: float, end: float) -> dict[str, Any]:
    first, last = sim.counter_step_at(start), sim.counter_step_at(end)
    return {
        "start_s": start,
        "end_s": end,
        "duration_s": end - start,
        "energy_j": [sim.curve.between_j(start, end) for _ in sim.devices],
        "counter_steps_s": [first, last],
        "counter_energy_j": [sim.curve.between_j(first, last) for _ in sim.devices],
        "peak_power_w": [sim.curve.peak_w(start, end) for _ in sim.devices],
        "batches": sum(1 for b in sim.batches if start <= b[0] < end),
    }


def ledger(sim: SimulatedNvml, window: tuple[float, float] | None, output_tokens: int | None) -> dict[str, Any]:
    now = sim.now()
    floor = _thermal_floor(sim)
    out: dict[str, Any] = {
        "kind": LEDGER_KIND,
        "simulated": True,
        "note": NOT_A_MEASUREMENT,
        "devices": [{"index": i, "uuid": d.uuid, "name": d.name} for i, d in enumerate(sim.devices)],
        "profile": sim.profile.model_dump(mode="json"),
        "faults": [
            f.model_dump(mode="json") | {"armed_s": None if sim.armed_s is None else sim.armed_s + f.at_s}
            for f in sim.spec.faults
        ],
        "origin_s": sim.origin_s,
        "trace": None
        if sim.trace is None
        else {"recorded_window_s": list(sim.trace.window_s), "readings": len(sim.trace.times_s)},
        "phases": _phases(sim, now),
        "batches": [list(b) for b in sim.batches],
        "thermal_floor": floor,
        "window": None,
        "truth": None,
    }
    if window is None or window[1] <= window[0]:
        return out
    win = _window(sim, *window)
    energy = sum(win["energy_j"])
    loaded = floor["second_half_mean_power_w"] if floor is not None else None
    out["window"] = win
    out["truth"] = {
        "energy_j": energy,
        "counter_energy_j": sum(win["counter_energy_j"]),
        "mean_power_w": energy / win["duration_s"],
        "peak_power_w": max(itertools.chain(win["peak_power_w"], [0.0])),
        "idle_power_w": [sim.profile.idle_w for _ in sim.devices],
        "loaded_idle_power_w": loaded,
        "adjusted_energy_j": None if loaded is None else energy - sum(loaded) * win["duration_s"],
        "j_per_output_token": energy / output_tokens if output_tokens else None,
        "counter_step_s": sim.profile.counter_step_s,
    }
    return out
