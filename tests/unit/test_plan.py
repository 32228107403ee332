from collections import Counter
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from llem.plan import cycle_orders, make_plan, williams_rows
from llem.study import load_study


def study_of(tmp_path: Path, n: int, execution: str = ""):
    values = ", ".join(str(i + 1) for i in range(n))
    path = tmp_path / "s.yaml"
    path.write_text(f"model: m\nsweep:\n  pytorch.batch_size: [{values}]\n{execution}")
    return load_study(path)


def test_cli_defaults_are_three_cycles_shuffled(tmp_path):
    plan = make_plan(study_of(tmp_path, 2))
    assert plan.n_cycles == 3 and plan.order == "shuffle"
    assert len(plan.runs) == 6
    assert Counter(r.run_id for r in plan.runs).most_common(1)[0][1] == 1


def test_sequential_and_interleave(tmp_path):
    study = study_of(tmp_path, 2)
    seq = make_plan(study, n_cycles=3, order="sequential")
    assert [r.run_id for r in seq.runs] == ["e001-c1", "e001-c2", "e001-c3", "e002-c1", "e002-c2", "e002-c3"]
    inter = make_plan(study, n_cycles=3, order="interleave")
    assert [r.run_id for r in inter.runs] == ["e001-c1", "e002-c1", "e001-c2", "e002-c2", "e001-c3", "e002-c3"]


def test_reverse_alternates_direction():
    assert cycle_orders(2, 3, "reverse", 0) == [[0, 1], [1, 0], [0, 1]]


def test_shuffle_is_reproducible_from_the_design_hash_and_overridable(tmp_path):
    a = make_plan(study_of(tmp_path, 6), n_cycles=4)
    b = make_plan(study_of(tmp_path, 6), n_cycles=4)
    assert [r.run_id for r in a.runs] == [r.run_id for r in b.runs]
    assert a.seed == int(a.study.design_hash[:8], 16)
    seeded = make_plan(study_of(tmp_path, 6, "study_execution: {shuffle_seed: 123}\n"), n_cycles=4)
    assert seeded.seed == 123
    assert [r.run_id for r in seeded.runs] != [r.run_id for r in a.runs]


def test_yaml_execution_is_used_and_cli_overrides_it(tmp_path):
    study = study_of(tmp_path, 2, "study_execution: {n_cycles: 2, experiment_order: sequential}\n")
    assert make_plan(study).order == "sequential" and make_plan(study).n_cycles == 2
    assert make_plan(study, n_cycles=5, order="interleave").n_cycles == 5


@given(st.integers(min_value=2, max_value=12))
def test_williams_design_balances_first_order_carryover(n):
    rows = williams_rows(n)
    assert all(sorted(row) == list(range(n)) for row in rows)
    pairs = Counter((row[i], row[i + 1]) for row in rows for i in range(n - 1))
    assert len(pairs) == n * (n - 1)
    assert len(set(pairs.values())) == 1


def test_latin_square_cycles_through_rows():
    orders = cycle_orders(4, 5, "latin_square", 0)
    assert orders[0] == [0, 1, 3, 2]
    assert orders[4] == orders[0]
