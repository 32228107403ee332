"""Every metric of a run, read from its typed result, and their statistics across cycles.

Each metric names the :class:`ExperimentResult` field it is read from (``energy.energy_j``), so
the columns of ``llem results`` and of the summary files are tied to the result model: a field
renamed there fails loudly (``Metric.read`` raises, and a unit test walks the model's fields),
never a column of blanks.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from llem_agent.contract import ExperimentResult

Better = Literal["higher", "lower"]


def field_value(result: ExperimentResult, path: str) -> Any:
    """The value at the dotted field ``path`` of ``result`` (None below a field that is None);
    AttributeError where ``path`` names no field of the model."""
    value: Any = result
    for key in path.split("."):
        if value is None:
            return None
        value = getattr(value, key)
    return value


@dataclass(frozen=True)
class Metric:
    """One metric column. ``path``: the :class:`ExperimentResult` field it is read from (dotted);
    ``per``: the field it is divided by, where it is a ratio; ``derived``: computed from
    ``path``'s value and the study's measurement factors (wall energy, CO2e), not read."""

    name: str
    label: str
    better: Better | None
    path: str
    per: str | None = None
    derived: bool = False

    def read(self, result: ExperimentResult) -> Any:
        """The metric's value in ``result`` (None where the result has none)."""
        value = field_value(result, self.path)
        if self.per is None:
            return value
        denominator = field_value(result, self.per)
        return value / denominator if value is not None and denominator else None


def _dist(field_name: str, short: str, label: str) -> list[Metric]:
    return [
        Metric(f"{short}_{stat}_s", f"{label} {stat} (s)", "lower", f"latency.{field_name}.{stat}")
        for stat in ("mean", "p50", "p90", "p99")
    ]


# Every metric of a run, in table order. Names carry their unit and denominator.
METRICS: tuple[Metric, ...] = (
    Metric("output_tokens_per_s", "output tokens/s", "higher", "throughput.output_tokens_per_s"),
    Metric("total_tokens_per_s", "tokens/s (in + out)", "higher", "throughput.total_tokens_per_s"),
    Metric("requests_per_s", "requests/s", "higher", "throughput.requests_per_s"),
    *_dist("ttft_s", "ttft", "time to first token"),
    *_dist("inter_token_s", "itl", "inter-token latency"),
    *_dist("e2e_s", "e2e", "end-to-end latency"),
    Metric("energy_j", "energy (J)", "lower", "energy.energy_j"),
    Metric("adjusted_energy_j", "energy above idle (J)", "lower", "energy.adjusted_energy_j"),
    Metric("trace_energy_j", "integrated power trace (J)", None, "energy.trace_energy_j"),
    Metric("j_per_output_token", "J per output token", "lower", "energy.j_per_output_token"),
    Metric(
        "adjusted_j_per_output_token",
        "J above idle per output token",
        "lower",
        "energy.adjusted_energy_j",
        per="output_tokens",
    ),
    Metric("j_per_token", "J per token (in + out)", "lower", "energy.j_per_token"),
    Metric("j_per_request", "J per request", "lower", "energy.j_per_request"),
    Metric("mean_power_w", "mean power (W)", None, "energy.mean_power_w"),
    Metric("peak_power_w", "peak power (W)", None, "energy.peak_power_w"),
    Metric("prefill_energy_j", "prefill energy (J)", "lower", "energy.prefill_energy_j"),
    Metric("decode_energy_j", "decode energy (J)", "lower", "energy.decode_energy_j"),
    Metric("cpu_energy_j", "CPU energy, RAPL (J)", "lower", "energy.cpu_energy_j"),
    Metric("peak_device_mb", "peak device memory (MiB)", "lower", "memory.peak_device_mb"),
    Metric("peak_host_rss_mb", "peak host RSS (MiB)", "lower", "memory.peak_host_rss_mb"),
    Metric("flops_estimate", "FLOPs estimate", None, "flops_estimate"),
    Metric("input_tokens", "input tokens", None, "input_tokens"),
    Metric("output_tokens", "output tokens", None, "output_tokens"),
    Metric("load_s", "load time (s)", "lower", "timings.load_s"),
    Metric("warmup_s", "warmup time (s)", None, "timings.warmup_s"),
    Metric("measure_s", "measured window (s)", None, "timings.measure_s"),
    # The cold start (cold_start: true), beside the warm window; blank where it was not measured.
    Metric("cold_load_s", "cold start: load (s)", "lower", "cold_start.load_s"),
    Metric("cold_ttft_s", "cold start: time to first token (s)", "lower", "cold_start.time_to_first_token_s"),
    Metric("cold_energy_j", "cold start: energy (J)", "lower", "cold_start.energy.energy_j"),
)
# From the measured energy and the factors recorded when the study ran (results.py).
DERIVED: tuple[Metric, ...] = (
    Metric("wall_energy_j", "energy at the wall, x PUE (J)", "lower", "energy.energy_j", derived=True),
    Metric("co2e_g", "CO2e (g)", "lower", "energy.energy_j", derived=True),
)
ALL_METRICS: tuple[Metric, ...] = METRICS + DERIVED
METRIC_BY_NAME = {m.name: m for m in ALL_METRICS}
# Keys each run's metrics cache: a new metric, or a new way of reading them, invalidates it.
METRICS_KEY = hashlib.sha256((",".join(m.name for m in METRICS) + ";window;typed;simulated").encode()).hexdigest()[:8]
# The metrics users rank configurations by; spread warnings are about these.
KEY_METRICS = ("output_tokens_per_s", "j_per_output_token", "e2e_p50_s")


@dataclass(frozen=True)
class Stat:
    """Mean and spread of one metric over an experiment's completed runs."""

    n: int
    mean: float | None
    std: float | None = None
    cv: float | None = None
    ci95_low: float | None = None
    ci95_high: float | None = None

    def half_width(self, scale: float = 1.0) -> float | None:
        """Half the 95% interval, in units x ``scale`` (None without an interval)."""
        if self.mean is None or self.ci95_high is None:
            return None
        return (self.ci95_high - self.mean) * scale

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "mean": self.mean,
            "std": self.std,
            "cv": self.cv,
            "ci95_low": self.ci95_low,
            "ci95_high": self.ci95_high,
        }


def format_mean_ci(mean: float | None, half: float | None, digits: int = 4) -> str:
    """``1,536 ± 127`` / ``0.2003 ± 0.0303``: the mean to ``digits`` significant figures and the
    95% half-width to the same decimals (– when there is no value)."""
    if mean is None or not math.isfinite(mean):
        return "–"
    magnitude = math.floor(math.log10(abs(mean))) if mean != 0 else 0
    decimals = max(0, digits - 1 - magnitude)
    text = f"{mean:,.{decimals}f}"
    return text if half is None else f"{text} ± {half:,.{decimals}f}"


def describe(values: Iterable[float | None]) -> Stat:
    """n, mean, sample standard deviation, CV and the 95% t-interval of the mean."""
    import numpy as np

    data = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(data.size)
    if n == 0:
        return Stat(n=0, mean=None)
    mean = float(data.mean())
    if n == 1:
        return Stat(n=1, mean=mean)
    from scipy.special import stdtrit  # the t quantile, without importing all of scipy.stats

    std = float(data.std(ddof=1))
    half = float(stdtrit(n - 1, 0.975)) * std / math.sqrt(n)
    cv = std / abs(mean) if mean != 0 else None
    return Stat(n=n, mean=mean, std=std, cv=cv, ci95_low=mean - half, ci95_high=mean + half)
