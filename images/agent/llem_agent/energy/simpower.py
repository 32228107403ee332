"""The power of a simulated GPU over time, in closed form (no sampling, no numerical integration).

Power follows a target level with a first-order lag: from ``p0`` at ``t0`` towards ``target`` with
time constant ``tau``, ``P(t) = target + (p0 - target) e^{-(t - t0)/tau}``, whose energy from
``t0`` is exactly ``target (t - t0) + (p0 - target) tau (1 - e^{-(t - t0)/tau})``. Each change of
the target (a phase, a batch starting or ending, throttling) starts a new segment where the last
one stands, so the energy at any time is the exact integral of the power up to it. Before the
first segment the power is its starting level, held flat.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass


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
