"""The power of a simulated GPU over time, in closed form (no sampling, no numerical integration).

Power follows a target level with a first-order lag: from ``p0`` at ``t0`` towards ``target`` with
time constant ``tau``, ``P(t) = target + (p0 - target) e^{-(t - t0)/tau}``, whose energy from
``t0`` is exactly ``target (t - t0) + (p0 - target) tau (1 - e^{-(t - t0)/tau})``. Each change of
the target (a phase, a batch starting or ending, throttling) starts a new segment where the last
one stands, so the energy at any time is the exact integral of the power up to it. Before the
first segment the power is its starting level, held flat.

A recorded trace can drive it instead (``Playback``): from the measured window's first batch the
power is what was recorded, so a trace ``make gpu-check`` kept plays back unchanged.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from llem_agent.contract.simulation import RecordedTrace


@dataclass(frozen=True)
class Segment:
    start_s: float
    p0_w: float  # power at start_s
    target_w: float
    e0_j: float  # energy from the origin to start_s


class PowerCurve:
    """Piecewise first-order power; ``energy_j(t)`` is its exact integral from ``origin_s``."""

    def __init__(self, origin_s: float, power_w: float, tau_s: float) -> None:
        self.origin_s = origin_s
        self.tau_s = tau_s
        self._segments = [Segment(origin_s, power_w, power_w, 0.0)]
        self._starts = [origin_s]

    def _segment(self, t: float) -> Segment:
        return self._segments[max(0, bisect.bisect_right(self._starts, t) - 1)]

    def power_w(self, t: float) -> float:
        seg = self._segment(t)
        dt = t - seg.start_s
        if dt <= 0:
            return seg.p0_w
        return seg.target_w + (seg.p0_w - seg.target_w) * math.exp(-dt / self.tau_s)

    def energy_j(self, t: float) -> float:
        """Joules from the origin to ``t`` (negative before it: the first level held flat)."""
        seg = self._segment(t)
        dt = t - seg.start_s
        if dt <= 0:
            return seg.e0_j + seg.p0_w * dt
        return seg.e0_j + seg.target_w * dt + (seg.p0_w - seg.target_w) * self.tau_s * (1 - math.exp(-dt / self.tau_s))

    def between_j(self, start_s: float, end_s: float) -> float:
        return self.energy_j(end_s) - self.energy_j(start_s)

    def mean_w(self, start_s: float, end_s: float) -> float:
        return self.between_j(start_s, end_s) / (end_s - start_s) if end_s > start_s else self.power_w(start_s)

    def peak_w(self, start_s: float, end_s: float) -> float:
        """The highest power between two times (each segment is monotonic: its ends and starts)."""
        times = [start_s, end_s, *(s for s in self._starts if start_s < s < end_s)]
        return max(self.power_w(t) for t in times)

    @property
    def target_w(self) -> float:
        return self._segments[-1].target_w

    def retarget(self, t: float, target_w: float) -> None:
        """From ``t`` (not before the last change) the power heads for ``target_w``."""
        last = self._segments[-1]
        t = max(t, last.start_s)
        if target_w == last.target_w:
            return
        self._segments.append(Segment(t, self.power_w(t), target_w, self.energy_j(t)))
        self._starts.append(t)


class Playback:
    """``before`` until ``start_s``, then a recorded trace played back from its window's start:
    the power is the recorded readings, linear between them (exactly the readings at their
    times), so the energy is the trapezoid integral of the readings, as a meter integrates them;
    after the last reading its power is held. Changes of target no longer move it."""

    def __init__(self, before: PowerCurve, start_s: float, trace: RecordedTrace) -> None:
        self.before = before
        self.start_s = start_s
        offset = start_s - trace.window_s[0]
        self._times = [t + offset for t in trace.times_s]
        self._power = list(trace.power_w)
        self._e0_j = before.energy_j(start_s)
        # energy from start_s to each reading at or after it, trapezoid by trapezoid
        self._cumulative: list[float] = []
        total, last_t, last_p = 0.0, start_s, self._played(start_s)
        for t, p in zip(self._times, self._power, strict=True):
            if t > start_s:
                total += (t - last_t) * (p + last_p) / 2
                last_t, last_p = t, p
            self._cumulative.append(total)

    def _played(self, t: float) -> float:
        times, power = self._times, self._power
        if t <= times[0]:
            return power[0]
        if t >= times[-1]:
            return power[-1]
        i = bisect.bisect_right(times, t)
        t0, t1, p0, p1 = times[i - 1], times[i], power[i - 1], power[i]
        return p0 + (p1 - p0) * (t - t0) / (t1 - t0)

    def power_w(self, t: float) -> float:
        return self.before.power_w(t) if t < self.start_s else self._played(t)

    def energy_j(self, t: float) -> float:
        if t <= self.start_s:
            return self.before.energy_j(t)
        i = bisect.bisect_right(self._times, t) - 1  # the last reading at or before t
        if i < 0 or self._times[i] <= self.start_s:
            base_t, base_j = self.start_s, 0.0
        else:
            base_t, base_j = self._times[i], self._cumulative[i]
        return self._e0_j + base_j + (t - base_t) * (self._played(base_t) + self._played(t)) / 2

    def between_j(self, start_s: float, end_s: float) -> float:
        return self.energy_j(end_s) - self.energy_j(start_s)

    def mean_w(self, start_s: float, end_s: float) -> float:
        return self.between_j(start_s, end_s) / (end_s - start_s) if end_s > start_s else self.power_w(start_s)

    def peak_w(self, start_s: float, end_s: float) -> float:
        if end_s <= self.start_s:
            return self.before.peak_w(start_s, end_s)
        live = [self.before.peak_w(start_s, min(end_s, self.start_s))] if start_s < self.start_s else []
        times = [max(start_s, self.start_s), end_s, *(t for t in self._times if start_s < t < end_s)]
        return max([*live, *(self.power_w(t) for t in times if t >= self.start_s)])

    @property
    def target_w(self) -> float:
        return self.before.target_w

    def retarget(self, t: float, target_w: float) -> None:
        if t < self.start_s:
            self.before.retarget(t, target_w)
