"""Property and fuzz tests of the sweep grammar and the planner."""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llem.errors import ConfigError
from llem.plan import Plan, cycle_orders, make_plan, williams_rows
from llem.study import study_from_data

ORIGIN = Path("/nonexistent/study.yaml")
# Fields whose distinct values give distinct, valid experiments.
AXIS_FIELDS = ["random_seed", "dataset.n_prompts", "max_output_tokens", "max_input_tokens", "pytorch.batch_size"]
GROUP_FIELDS = ["decoder.top_k", "warmup.n_warmup", "decoder.min_new_tokens"]
MINI_FIELDS = ["decoder.top_p", "decoder.repetition_penalty"]  # one per group: groups touch disjoint fields


@st.composite
def grids(draw: st.DrawFn) -> tuple[dict[str, Any], int]:
    axes = draw(st.lists(st.sampled_from(AXIS_FIELDS), unique=True, max_size=3))
    sweep: dict[str, Any] = {}
    expected = 1
    for key in axes:
        values = draw(st.lists(st.integers(1, 500), min_size=1, max_size=4, unique=True))
        sweep[key] = values
        expected *= len(values)
    for g, field in enumerate(draw(st.lists(st.sampled_from(GROUP_FIELDS), unique=True, max_size=2))):
        # 100-200: never a field's default, so no entry equals the `{}` baseline.
        values = draw(st.lists(st.integers(100, 200), min_size=1, max_size=3, unique=True))
        entries: list[dict[str, Any]] = [{field: v} for v in values]
        if draw(st.booleans()):
            entries.append({})
        if draw(st.booleans()):  # a mini-grid entry over another field
            entries.append({field: 99, MINI_FIELDS[g]: [1.0, 0.5]})
        size = len(values) + sum(
            2 if any(isinstance(v, list) for v in e.values()) else 1 for e in entries[len(values) :]
        )
        sweep[f"group{g}"] = entries
        expected *= size
    return {"model": "m", "engine": "pytorch", "sweep": sweep or {"random_seed": [1]}}, expected


@given(grids())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_experiment_count_is_the_product_and_configs_are_distinct(case):
    data, expected = case
    study = study_from_data(data, ORIGIN)
    assert len(study.experiments) == expected
    assert study.skipped == ()
    assert len({e.config_hash for e in study.experiments}) == len(study.experiments)


@given(
    n=st.integers(1, 9),
    cycles=st.integers(1, 6),
    order=st.sampled_from(["sequential", "interleave", "shuffle", "reverse", "latin_square"]),
    seed=st.integers(0, 2**32),
)
def test_every_cycle_is_a_permutation_of_the_experiments(n, cycles, order, seed):
    for cycle in cycle_orders(n, cycles, order, seed):
        assert sorted(cycle) == list(range(n))


@given(st.integers(1, 11))
def test_latin_square_puts_each_experiment_in_each_position_equally_often(n):
    rows = williams_rows(n)
    for position in range(n):
        counts = Counter(row[position] for row in rows)
        assert set(counts) == set(range(n))
        assert len(set(counts.values())) == 1


def test_plan_has_each_run_once(tmp_path):
    study = study_from_data({"model": "m", "sweep": {"random_seed": [1, 2, 3]}}, ORIGIN)
    plan = make_plan(study, n_cycles=4)
    assert Counter((r.experiment.index, r.cycle) for r in plan.runs) == Counter(
        {(e, c): 1 for e in range(3) for c in range(1, 5)}
    )
    assert len(plan.runs) == math.prod([3, 4])


KEYS = ["model", "engine", "dtype", "sweep", "experiments", "study_execution", "dataset", "pytorch", "vllm",
        "decoder", "n_cycles", "name", "base", "runners", "pytorch.batch_size", "dataset.n_prompts", "group",
        "tensorrt.quant_config", "transformers", "", "x.y.z"]  # fmt: skip
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True), st.text(max_size=8))
yaml_like = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), children, max_size=5),
    ),
    max_leaves=25,
)


@given(st.dictionaries(st.sampled_from(KEYS), yaml_like, max_size=6))
@settings(max_examples=int(os.environ.get("LLEM_FUZZ_EXAMPLES", "400")), suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_planner_returns_a_plan_or_a_config_error(data):
    outcome = plan_or_error(data)
    if isinstance(outcome, ConfigError):
        message = str(outcome)
        assert message
        assert "\n" not in message
    else:
        assert len(outcome.runs) == len(outcome.study.experiments) * outcome.n_cycles


def plan_or_error(data: dict[str, Any]) -> Plan | ConfigError:
    """A plan, or our own configuration error; anything else escapes and fails the test."""
    try:
        return make_plan(study_from_data(data, ORIGIN))
    except ConfigError as exc:
        return exc
