"""Pure maths over a sampled power/thermal trace: integration, attribution, validity flags.

Times are seconds on the agent's monotonic clock, powers watts, temperatures Celsius.
Nothing here touches NVML: the sampler records, these functions judge.
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llem_agent.contract import ValidityFlag

SHORT_WINDOW_S = 5.0
GAP_FACTOR = 2.0
DISAGREEMENT = 0.05
# A window whose temperature still moves this fast at its end is not on a normal warm-up ramp
# (whose slope has fallen to a few tenths of a degree per second after ~10 s of load): cooling
# that does not keep up, or clocks stepping down. 1 C/s also stays clear of the noise of whole-
# degree readings once a second.
TEMPERATURE_SLOPE_C_PER_S = 1.0
# ... judged over the window's last third, and at least this long.
TEMPERATURE_TAIL_MIN_S = 3.0


@dataclass(frozen=True)
class Sample:
    """One reading of one device. Power is required; every other field is None where the
    device or driver does not report it (utilisation on a MIG slice, clocks on some boards)."""

    time_s: float
    device: int
    power_w: float
    temperature_c: float | None = None
    memory_used_mb: float | None = None
    memory_total_mb: float | None = None
    sm_utilisation_pct: float | None = None
    sm_clock_mhz: float | None = None
    throttle_reasons: int | None = None


def device_trace(samples: Sequence[Sample], device: int) -> list[Sample]:
    return sorted((s for s in samples if s.device == device), key=lambda s: s.time_s)


def integrate_j(trace: Sequence[Sample], start_s: float, end_s: float) -> float:
    """Energy of ``trace`` between two times: trapezoids over the samples, power linearly
    interpolated at the window's edges and held flat beyond the first and last sample."""
    if end_s <= start_s or not trace:
        return 0.0
    times = [s.time_s for s in trace]
    powers = [s.power_w for s in trace]

    def power_at(t: float) -> float:
        k = bisect.bisect_left(times, t)
        if k == 0:
            return powers[0]
        if k == len(times):
            return powers[-1]
        t0, t1, p0, p1 = times[k - 1], times[k], powers[k - 1], powers[k]
        return p1 if t1 == t0 else p0 + (p1 - p0) * (t - t0) / (t1 - t0)

    lo, hi = bisect.bisect_right(times, start_s), bisect.bisect_left(times, end_s)
    knots = [(start_s, power_at(start_s)), *zip(times[lo:hi], powers[lo:hi], strict=True), (end_s, power_at(end_s))]
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in itertools.pairwise(knots))


def window_samples(trace: Sequence[Sample], start_s: float, end_s: float) -> list[Sample]:
    return [s for s in trace if start_s <= s.time_s <= end_s]


def max_gap_s(trace: Sequence[Sample], start_s: float, end_s: float) -> float:
    """The longest stretch of the window without a sample (window edges included)."""
    times = [start_s, *(s.time_s for s in window_samples(trace, start_s, end_s)), end_s]
    return max(b - a for a, b in itertools.pairwise(times))


@dataclass(frozen=True)
class WindowFacts:
    """What the validity checks need to know about one measured window."""

    duration_s: float
    interval_s: float
    counter_j: float | None
    trace_j: float | None
    counter_monotonic: bool
    max_gap_s: float
    throttle_events: int
    temperature_slope_c_per_s: float
    power_capped_fraction: float = 0.0
    baseline_age_s: float | None = None
    baseline_ttl_s: float | None = None


def validity_flags(facts: WindowFacts) -> list[ValidityFlag]:
    """Every reason a reader should doubt this window's energy, each with its evidence."""
    flags: list[ValidityFlag] = []
    if facts.duration_s < SHORT_WINDOW_S:
        flags.append(ValidityFlag(code="short_window", message=f"measured window {facts.duration_s:.2f} s < 5 s"))
    if facts.max_gap_s > GAP_FACTOR * facts.interval_s:
        flags.append(
            ValidityFlag(
                code="sampling_gap",
                message=f"longest gap between samples {facts.max_gap_s:.3f} s > 2 x interval {facts.interval_s:.3f} s",
            )
        )
    if not facts.counter_monotonic:
        flags.append(ValidityFlag(code="counter_reset", message="the energy counter reset or went backwards"))
    if facts.throttle_events:
        flags.append(
            ValidityFlag(
                code="throttled",
                message=f"{facts.throttle_events} samples with thermal or hardware clock slowdown "
                f"(reasons {THERMAL_OR_HW_SLOWDOWN:#x})",
            )
        )
    if abs(facts.temperature_slope_c_per_s) > TEMPERATURE_SLOPE_C_PER_S:
        flags.append(
            ValidityFlag(
                code="temperature_drift",
                message=f"temperature still moving {facts.temperature_slope_c_per_s:+.2f} C/s over the window's "
                f"last third (more than {TEMPERATURE_SLOPE_C_PER_S} C/s: not at a plateau)",
            )
        )
    if facts.counter_j and facts.trace_j is not None:
        gap = abs(facts.counter_j - facts.trace_j) / facts.counter_j
        if gap > DISAGREEMENT:
            flags.append(
                ValidityFlag(
                    code="counter_trace_disagree",
                    message=f"counter {facts.counter_j:.2f} J vs power trace {facts.trace_j:.2f} J ({gap:.1%})",
                )
            )
    if (
        facts.baseline_age_s is not None
        and facts.baseline_ttl_s is not None
        and facts.baseline_age_s > facts.baseline_ttl_s
    ):
        flags.append(ValidityFlag(code="stale_baseline", message=f"idle baseline is {facts.baseline_age_s:.0f} s old"))
    return flags


# NVML clock-event reasons (nvmlClocksEventReason*). ``throttled`` means what a reader expects:
# clocks held back by heat or by the hardware (slowdown, thermal, power brake). The software
# power cap (0x4) is routine on a fully loaded GPU and is reported apart as a fraction of
# samples; idle (0x1), application clocks (0x2), sync boost (0x10) and display clocks (0x100)
# are benign.
SW_POWER_CAP = 0x4
THERMAL_OR_HW_SLOWDOWN = 0x8 | 0x20 | 0x40 | 0x80  # HW slowdown, SW thermal, HW thermal, HW power brake


def throttle_events(samples: Sequence[Sample]) -> int:
    return sum(1 for s in samples if (s.throttle_reasons or 0) & THERMAL_OR_HW_SLOWDOWN)


def power_capped_fraction(samples: Sequence[Sample]) -> float:
    """Share of samples whose clocks the software power cap held back (not a validity problem)."""
    known = [s.throttle_reasons for s in samples if s.throttle_reasons is not None]
    return sum(1 for reasons in known if reasons & SW_POWER_CAP) / len(known) if known else 0.0


def temperature_slope_c_per_s(samples: Sequence[Sample]) -> float:
    """How fast the temperature still moved at the window's end: the least-squares slope over
    its last third (at least ``TEMPERATURE_TAIL_MIN_S``), C/s; 0 with fewer than three readings.

    The thermal floor lets a GPU cool before each window, so every window opens on a warm-up
    ramp: a fast rise as the die takes load, then a slow climb toward a plateau. That is
    physics, not a fault, and a total rise says nothing about whether it settled. What makes a
    window's energy hard to compare is a temperature still climbing (or falling) steeply as the
    window ends: the slope there is what is judged, not the span.
    """
    timed = sorted((s.time_s, s.temperature_c) for s in samples if s.temperature_c is not None)
    if len(timed) < 3:
        return 0.0
    first, last = timed[0][0], timed[-1][0]
    cut = last - max((last - first) / 3, TEMPERATURE_TAIL_MIN_S)
    tail = [(t, c) for t, c in timed if t >= cut]
    if len(tail) < 3:
        return 0.0
    mean_t = sum(t for t, _ in tail) / len(tail)
    mean_c = sum(c for _, c in tail) / len(tail)
    spread = sum((t - mean_t) ** 2 for t, _ in tail)
    return sum((t - mean_t) * (c - mean_c) for t, c in tail) / spread if spread > 0 else 0.0


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


TELEMETRY_COLUMNS = (
    "timestamp_s",
    "gpu_index",
    "power_w",
    "temperature_c",
    "memory_used_mb",
    "memory_total_mb",
    "sm_utilisation_pct",
    "throttle_reasons",
)


def downsample(
    samples: Sequence[Sample], start_s: float, resolution_s: float = 1.0
) -> list[dict[str, float | int | None]]:
    """One row per device per ``resolution_s`` bucket (003: 1 Hz), times since ``start_s``.

    Numeric columns are bucket means of the readings the device gave (null where it gave none);
    ``memory_total_mb`` is the last value; throttle reasons are OR-ed, so a brief throttle inside
    a second is not averaged away.
    """
    buckets: dict[tuple[int, int], list[Sample]] = {}
    for s in samples:
        buckets.setdefault((s.device, int((s.time_s - start_s) // resolution_s)), []).append(s)
    rows: list[dict[str, float | int | None]] = []
    for (device, bucket), group in sorted(buckets.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        reasons: int | None = None
        for s in group:
            if s.throttle_reasons is not None:
                reasons = (reasons or 0) | s.throttle_reasons
        rows.append(
            {
                "timestamp_s": bucket * resolution_s,
                "gpu_index": device,
                "power_w": sum(s.power_w for s in group) / len(group),
                "temperature_c": _mean([s.temperature_c for s in group]),
                "memory_used_mb": _mean([s.memory_used_mb for s in group]),
                "memory_total_mb": group[-1].memory_total_mb,
                "sm_utilisation_pct": _mean([s.sm_utilisation_pct for s in group]),
                "throttle_reasons": reasons,
            }
        )
    return rows


def write_parquet(rows: list[dict[str, float | int | None]], path: Path) -> None:
    """Write the downsampled trace with pyarrow (a temp file, then an atomic rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("timestamp_s", pa.float64()),
            ("gpu_index", pa.int32()),
            ("power_w", pa.float64()),
            ("temperature_c", pa.float64()),
            ("memory_used_mb", pa.float64()),
            ("memory_total_mb", pa.float64()),
            ("sm_utilisation_pct", pa.float64()),
            ("throttle_reasons", pa.int64()),
        ]
    )
    table = pa.Table.from_pylist(rows, schema=schema)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
