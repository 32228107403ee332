"""Sweep expansion: a study's shared fields + ``sweep:`` + ``experiments:`` -> raw configs.

Pure functions over plain dicts; validation into ExperimentConfig happens afterwards so
that invalid grid points can be reported as skipped rather than crash the study (002).
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from llem_agent.contract import ENGINE_ALIASES, ENGINES, canonical_engine
from orchestrator.errors import ConfigError

Scalar = str | int | float | bool | None
_ENGINE_PREFIXES = set(ENGINES) | set(ENGINE_ALIASES)


def engine_scope(key: str) -> str | None:
    """The engine a dotted sweep key is scoped to (``pytorch.batch_size`` -> pytorch)."""
    head = key.split(".", 1)[0]
    return canonical_engine(head) if head in _ENGINE_PREFIXES and "." in key else None


def set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in nested dicts, creating levels; engine aliases map to their section."""
    parts = key.split(".")
    if parts[0] in ENGINE_ALIASES:
        parts[0] = ENGINE_ALIASES[parts[0]]
    node = target
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"sweep key '{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``override`` merged in; nested dicts merge, the rest replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _normalise_sections(data: dict[str, Any]) -> dict[str, Any]:
    # Treat `transformers:` and `pytorch:` as one section so merges line up.
    if "transformers" in data and isinstance(data["transformers"], dict):
        data = dict(data)
        data["pytorch"] = deep_merge(data.get("pytorch") or {}, data.pop("transformers"))
    return data


def _axes(sweep: dict[str, Any]) -> list[tuple[str, list[Scalar]]]:
    axes: list[tuple[str, list[Scalar]]] = []
    for key, values in sweep.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"sweep: keys must be non-empty strings, got {key!r}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.{key}: expected a non-empty list of values, got {values!r}")
        if any(isinstance(v, dict) for v in values):
            raise ConfigError(
                f"sweep.{key}: dependent groups (lists of mappings) are not supported yet; "
                "use independent axes or experiments:"
            )
        if any(isinstance(v, list) for v in values):
            raise ConfigError(f"sweep.{key}: values must be scalars, got a nested list")
        axes.append((key, values))
    return axes


def _engines_of(shared: dict[str, Any], axes: list[tuple[str, list[Scalar]]]) -> list[str]:
    engine = shared.get("engine")
    if isinstance(engine, list):
        if not engine or not all(isinstance(e, str) for e in engine):
            raise ConfigError(f"engine: expected a name or a non-empty list of names, got {engine!r}")
        return [canonical_engine(e) for e in engine]
    if isinstance(engine, str):
        return [canonical_engine(engine)]
    scoped = sorted({s for key, _ in axes if (s := engine_scope(key))})
    return scoped or ["pytorch"]


def expand(shared: dict[str, Any], sweep: dict[str, Any] | None, experiments: list[Any] | None) -> list[dict[str, Any]]:
    """All raw experiment configs of a study, sweep grid first, then explicit entries.

    Each engine gets its own grid: the universal axes crossed with the axes scoped to it
    (002). Scoped axes for an engine the study does not run are an error.
    """
    shared = _normalise_sections(shared)
    configs: list[dict[str, Any]] = []
    if sweep:
        axes = _axes(sweep)
        engines = _engines_of(shared, axes)
        for key, _ in axes:
            scope = engine_scope(key)
            if scope is not None and scope not in engines:
                raise ConfigError(f"sweep.{key}: scoped to engine '{scope}', which this study does not run ({engines})")
        for engine in engines:
            mine = [(k, v) for k, v in axes if engine_scope(k) in (None, engine)]
            for combo in itertools.product(*(values for _, values in mine)):
                config = copy.deepcopy(shared)
                config["engine"] = engine
                for (key, _), value in zip(mine, combo, strict=True):
                    set_dotted(config, key, value)
                configs.append(config)
    elif isinstance(shared.get("engine"), list) and not experiments:
        configs.extend({**copy.deepcopy(shared), "engine": e} for e in _engines_of(shared, []))
    for index, entry in enumerate(experiments or []):
        if not isinstance(entry, dict):
            raise ConfigError(f"experiments[{index}]: expected a mapping, got {type(entry).__name__}")
        merged = deep_merge(shared, _normalise_sections(entry))
        if isinstance(merged.get("engine"), list):
            raise ConfigError(f"experiments[{index}]: give one engine per explicit experiment")
        configs.append(merged)
    return configs
