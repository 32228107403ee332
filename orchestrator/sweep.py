"""Sweep expansion: a study's shared fields + ``sweep:`` + ``experiments:`` -> raw configs.

Pure functions over plain dicts; validation into ExperimentConfig happens afterwards so
that invalid grid points can be reported as skipped rather than crash the study (002).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llem_agent.contract import ENGINE_ALIASES, ENGINES, canonical_engine

from .errors import ConfigError

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
    # `transformers:` is another name of the `pytorch:` section; rename it so merges line up.
    if "transformers" not in data:
        return data
    if "pytorch" in data:
        raise ConfigError("give either 'pytorch:' or 'transformers:', not both")
    return {("pytorch" if k == "transformers" else k): v for k, v in data.items()}


@dataclass(frozen=True)
class Axis:
    """An independent axis: a list of scalars, crossed with everything else."""

    key: str
    values: list[Scalar]


@dataclass(frozen=True)
class Group:
    """A dependent group: alternatives (each a dict of dotted keys), crossed as one dimension."""

    name: str
    variants: list[dict[str, Any]]


def _mini_grid(group: str, index: int, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Expand list-valued keys of one group entry into their own small Cartesian product."""
    for key in entry:
        if not isinstance(key, str) or not key:
            raise ConfigError(f"sweep.{group}[{index}]: keys must be non-empty strings, got {key!r}")
    listed = [(k, v) for k, v in entry.items() if isinstance(v, list)]
    for key, values in listed:
        if not values or any(isinstance(v, (dict, list)) for v in values):
            raise ConfigError(f"sweep.{group}[{index}].{key}: a list here must be a non-empty list of scalars")
    fixed = {k: v for k, v in entry.items() if not isinstance(v, list)}
    return [
        {**fixed, **dict(zip([k for k, _ in listed], combo, strict=True))}
        for combo in itertools.product(*(v for _, v in listed))
    ]


def parse_sweep(sweep: dict[str, Any]) -> tuple[list[Axis], list[Group]]:
    """Split ``sweep:`` into independent axes (lists of scalars) and dependent groups (lists of dicts)."""
    axes: list[Axis] = []
    groups: list[Group] = []
    for key, values in sweep.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"sweep: keys must be non-empty strings, got {key!r}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.{key}: expected a non-empty list of values, got {values!r}")
        dicts = [v for v in values if isinstance(v, dict)]
        if dicts and len(dicts) != len(values):
            raise ConfigError(f"sweep.{key}: a list must hold only scalars (an axis) or only mappings (a group)")
        if dicts:
            variants = [variant for i, entry in enumerate(dicts) for variant in _mini_grid(key, i, entry)]
            groups.append(Group(key, variants))
        elif any(isinstance(v, list) for v in values):
            raise ConfigError(f"sweep.{key}: values must be scalars, got a nested list")
        else:
            axes.append(Axis(key, values))
    axis_keys = {_canonical_key(a.key) for a in axes}
    for group in groups:
        if _canonical_key(group.name) in axis_keys:
            raise ConfigError(f"sweep.{group.name}: a group name must not equal an axis key; use an abstract name")
    return axes, groups


def _canonical_key(key: str) -> str:
    head, dot, rest = key.partition(".")
    return f"{canonical_engine(head)}{dot}{rest}" if head in _ENGINE_PREFIXES else key


def _engines_of(shared: dict[str, Any], scoped_names: list[str]) -> list[str]:
    engine = shared.get("engine")
    if isinstance(engine, list):
        if not engine or not all(isinstance(e, str) for e in engine):
            raise ConfigError(f"engine: expected a name or a non-empty list of names, got {engine!r}")
        return list(dict.fromkeys(canonical_engine(e) for e in engine))
    if isinstance(engine, str):
        return [canonical_engine(engine)]
    scoped = sorted({s for key in scoped_names if (s := engine_scope(key))})
    named = _named_engines(shared, scoped_names)
    if len(named) > 1:
        engines = sorted(named)
        where = [named[e] for e in engines]
        raise ConfigError(
            f"{', '.join(where[:-1])} and {where[-1]} name {len(engines)} engines ({', '.join(engines)}) but the "
            f"study sets no engine:, which is ambiguous; set engine: [{', '.join(engines)}] to sweep them, each "
            "with its own grid, or engine: NAME for one"
        )
    return scoped or ["pytorch"]


def _named_engines(shared: dict[str, Any], scoped_names: list[str]) -> dict[str, str]:
    """Where a swept study without ``engine:`` names an engine: each engine with the first sweep
    key scoped to it (``sweep.pytorch.batch_size``), else its top-level section (``the vllm:
    section``). 002 infers the engine from the scoped sweep keys, an error where they name more
    than one; a section names its engine too, but alone infers nothing (its config says to set
    ``engine:``). Keys inside a group's entries do not count: an entry may set ``engine:`` itself
    (a group pairing each engine with its own settings)."""
    named: dict[str, str] = {}
    for key in scoped_names:
        if scope := engine_scope(key):
            named.setdefault(scope, f"sweep.{key}")
    for section in ENGINES:
        if isinstance(shared.get(section), dict):
            named.setdefault(section, f"the {section}: section")
    return named


def _grid(shared: dict[str, Any], engine: str, axes: list[Axis], groups: list[Group]) -> Iterator[dict[str, Any]]:
    mine_axes = [a for a in axes if engine_scope(a.key) in (None, engine)]
    mine_groups = [g for g in groups if engine_scope(g.name) in (None, engine)]
    dimensions: list[list[Any]] = [a.values for a in mine_axes] + [g.variants for g in mine_groups]
    for combo in itertools.product(*dimensions):
        config = copy.deepcopy(shared)
        config["engine"] = engine
        for axis, value in zip(mine_axes, combo, strict=False):
            set_dotted(config, axis.key, value)
        for variant in combo[len(mine_axes) :]:
            for key, value in variant.items():
                set_dotted(config, key, value)
        yield config


def _engine_axis(shared: dict[str, Any], sweep: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``sweep: {engine: [pytorch, vllm], ...}`` means what ``engine: [pytorch, vllm]`` means:
    each engine its own grid, with only its own scoped keys (002), never the cross product that
    would pair a pytorch experiment with ``vllm.*`` values (each such point invalid)."""
    if not sweep or "engine" not in sweep:
        return shared, sweep
    if "engine" in shared:
        raise ConfigError("engine: given both as a field and as a sweep axis; give it once")
    rest = {k: v for k, v in sweep.items() if k != "engine"}
    return {**shared, "engine": sweep["engine"]}, rest


def count_configs(shared: dict[str, Any], sweep: dict[str, Any] | None, experiments: list[Any] | None) -> int:
    """How many raw configs ``expand`` would build, counted without building any (the grid is a
    product of list lengths; a 10^10-point sweep is refused before it eats memory)."""
    shared, sweep = _engine_axis(_normalise_sections(shared), sweep)
    total = len(experiments) if isinstance(experiments, list) else 0
    if not sweep:
        engine = shared.get("engine")
        return total + (len(engine) if isinstance(engine, list) and not experiments else 0) or 1
    sizes: dict[str, int] = {}
    for key, values in sweep.items():
        if not isinstance(key, str) or not isinstance(values, list) or not values:
            return total + 1  # expand() says what is wrong with it
        if all(isinstance(v, dict) for v in values):
            sizes[key] = sum(math.prod(len(x) for x in entry.values() if isinstance(x, list)) for entry in values)
        else:
            sizes[key] = len(values)
    engines = _engines_of(shared, list(sizes))
    for engine in engines:
        total += math.prod(n for key, n in sizes.items() if engine_scope(key) in (None, engine))
    return total


def expand(shared: dict[str, Any], sweep: dict[str, Any] | None, experiments: list[Any] | None) -> list[dict[str, Any]]:
    """All raw experiment configs of a study, sweep grid first, then explicit entries.

    Each engine gets its own grid (002): universal axes and groups crossed with the ones
    scoped to it. A group contributes its variants as one dimension (alternatives, not
    crossed with each other); an engine-scoped group applies only to that engine.
    """
    shared, sweep = _engine_axis(_normalise_sections(shared), sweep)
    configs: list[dict[str, Any]] = []
    if sweep:
        axes, groups = parse_sweep(sweep)
        engines = _engines_of(shared, [a.key for a in axes] + [g.name for g in groups])
        for name in [a.key for a in axes] + [g.name for g in groups]:
            scope = engine_scope(name)
            if scope is not None and scope not in engines:
                raise ConfigError(
                    f"sweep.{name}: scoped to engine '{scope}', which this study does not run ({engines})"
                )
        for engine in engines:
            configs.extend(_grid(shared, engine, axes, groups))
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
