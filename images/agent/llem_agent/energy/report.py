"""The GPUs' energy report over the window from their counters and power trace (pure functions:
no NVML, no clock)."""

from __future__ import annotations

from dataclasses import replace

from llem_agent.contract import BaselineReport, DeviceEnergy, EnergyReport
from llem_agent.energy.nvml import MAX_STEP_WAIT_S, STEP_POLL_S, PowerReading
from llem_agent.energy.source import WindowWork
from llem_agent.telemetry import (
    Sample,
    WindowFacts,
    device_trace,
    integrate_j,
    max_gap_s,
    power_capped_fraction,
    temperature_slope_c_per_s,
    throttle_events,
    validity_flags,
    window_samples,
)

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


def _peak_total_power(samples: list[Sample], start_s: float, interval_s: float) -> float | None:
    """Highest sum of all devices' power within one sampling interval (each device is stamped
    on its own read, so one sweep's readings differ by a few milliseconds)."""
    totals: dict[int, dict[int, float]] = {}
    for s in samples:
        bucket = round((s.time_s - start_s) / interval_s) if interval_s > 0 else 0
        totals.setdefault(bucket, {})[s.device] = s.power_w
    return max((sum(by_device.values()) for by_device in totals.values()), default=None)
