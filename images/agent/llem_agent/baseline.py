"""Idle power baseline: measured on the run's own devices before the model loads (003).

Strategies: ``fresh`` measures every run; ``cached`` reuses a measurement of the same
devices younger than ``cache_ttl_seconds``; ``validated`` does the same but every
``validation_interval`` uses spot-checks the cached value with a short measurement and
measures afresh when it drifted by more than ``drift_threshold``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ValidationError

from llem_agent.contract import BaselineConfig, BaselineReport, BaselineSource, write_atomic

CACHE_FILE = "baselines.json"
SPOT_CHECK_S = 5.0


class PowerSource(Protocol):
    """Where idle power comes from: the meter over NVML, or a fake."""

    def device_ids(self) -> list[str]: ...

    def idle_power_w(self, duration_s: float) -> list[float]: ...


class CachedBaseline(BaseModel):
    """One cache entry: the idle power of a set of devices, when it was measured, how often used."""

    power_w: list[float]
    measured_at: float
    uses: int = 0


def _load(cache_dir: Path) -> dict[str, CachedBaseline]:
    try:
        raw = json.loads((cache_dir / CACHE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entries: dict[str, CachedBaseline] = {}
    for key, value in raw.items() if isinstance(raw, dict) else ():
        try:
            entries[key] = CachedBaseline.model_validate(value)
        except ValidationError:
            continue  # a damaged entry is re-measured, never trusted
    return entries


def resolve_baseline(
    source: PowerSource,
    config: BaselineConfig,
    cache_dir: Path | None,
    now: Callable[[], float] = time.time,
) -> BaselineReport:
    """The baseline this run uses, measured or from the cache, with its age."""
    key = "|".join(source.device_ids())
    use_cache = cache_dir is not None and config.strategy != "fresh"
    cache = _load(cache_dir) if cache_dir is not None and use_cache else {}
    entry = cache.get(key)
    how: BaselineSource = "measured"
    if entry is not None and now() - entry.measured_at <= config.cache_ttl_seconds:
        entry.uses += 1
        how = "cache"
        if config.strategy == "validated" and entry.uses % config.validation_interval == 0:
            check = sum(source.idle_power_w(SPOT_CHECK_S))
            reference = sum(entry.power_w)
            drift = abs(check - reference) / reference if reference else 0.0
            how = "remeasured_after_drift" if drift > config.drift_threshold else "cache_validated"
    if how in ("measured", "remeasured_after_drift") or entry is None:
        entry = CachedBaseline(power_w=source.idle_power_w(config.duration_seconds), measured_at=now(), uses=1)
    cache[key] = entry
    if cache_dir is not None and use_cache:
        write_atomic(cache_dir / CACHE_FILE, json.dumps({k: v.model_dump() for k, v in cache.items()}, indent=2))
    return BaselineReport(
        strategy=config.strategy,
        source=how,
        power_w=entry.power_w,
        total_power_w=sum(entry.power_w),
        duration_s=config.duration_seconds,
        measured_at=entry.measured_at,
        age_s=max(0.0, now() - entry.measured_at),
    )
