"""Execution plan: which experiment runs in which cycle, in what order, under what run id."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .study import DEFAULT_CYCLES, DEFAULT_ORDER, Experiment, ExperimentOrder, Study


@dataclass(frozen=True)
class PlannedRun:
    """One container launch: experiment ``experiment.index`` in cycle ``cycle`` (1-based)."""

    run_id: str
    cycle: int
    experiment: Experiment


@dataclass(frozen=True)
class Plan:
    study: Study
    n_cycles: int
    order: ExperimentOrder
    seed: int | None
    runs: tuple[PlannedRun, ...]


def run_id(experiment_index: int, cycle: int) -> str:
    """Stable, filesystem-safe id: ``e003-c2`` is experiment 3, cycle 2 (both 1-based)."""
    return f"e{experiment_index + 1:03d}-c{cycle}"


def williams_rows(n: int) -> list[list[int]]:
    """Rows of a Williams design: a Latin square balanced for first-order carryover.

    Every experiment follows every other exactly once across the rows (twice for odd
    ``n``, which needs the mirrored rows as well).
    """
    if n <= 0:
        return []
    first, low, high = [0], 1, n - 1
    while len(first) < n:  # 0, 1, n-1, 2, n-2, ...
        if len(first) % 2 == 1:
            first.append(low)
            low += 1
        else:
            first.append(high)
            high -= 1
    rows = [[(x + shift) % n for x in first] for shift in range(n)]
    if n % 2 == 1 and n > 1:
        rows += [row[::-1] for row in rows]
    return rows


def cycle_orders(n_experiments: int, n_cycles: int, order: ExperimentOrder, seed: int) -> list[list[int]]:
    """Experiment indices to run in each cycle, for the orders of 003."""
    base = list(range(n_experiments))
    if order == "shuffle":
        rng = random.Random(seed)
        return [rng.sample(base, len(base)) for _ in range(n_cycles)]
    if order == "reverse":
        return [base if c % 2 == 0 else base[::-1] for c in range(n_cycles)]
    if order == "latin_square":
        rows = williams_rows(n_experiments)
        return [rows[c % len(rows)] for c in range(n_cycles)]
    return [base for _ in range(n_cycles)]


def make_plan(study: Study, n_cycles: int | None = None, order: ExperimentOrder | None = None) -> Plan:
    """Order every (experiment, cycle) run. Explicit arguments override the YAML (CLI flags)."""
    cycles = n_cycles or study.execution.n_cycles or DEFAULT_CYCLES
    chosen: ExperimentOrder = order or study.execution.experiment_order or DEFAULT_ORDER
    seed = study.execution.shuffle_seed
    if seed is None:
        seed = int(study.design_hash[:8], 16)
    experiments = study.experiments
    runs: list[PlannedRun] = []
    if chosen == "sequential":
        for exp in experiments:
            runs.extend(PlannedRun(run_id(exp.index, c), c, exp) for c in range(1, cycles + 1))
    else:
        for cycle, indices in enumerate(cycle_orders(len(experiments), cycles, chosen, seed), start=1):
            runs.extend(PlannedRun(run_id(i, cycle), cycle, experiments[i]) for i in indices)
    return Plan(
        study=study, n_cycles=cycles, order=chosen, seed=seed if chosen == "shuffle" else None, runs=tuple(runs)
    )
