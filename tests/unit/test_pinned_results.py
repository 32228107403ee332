"""Statistics across cycles, their warnings, the ranking, the design hash and the claim refresh
period, pinned to values worked out by hand (issue 22, section 2)."""

from __future__ import annotations

import hashlib
import json
import math
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest

from llem import claims
from llem.claims import DEFAULT_STALE_AFTER_S, GARBAGE_GRACE_S, ClaimBoard, Seen, owner_token
from llem.results import (
    CV_WARNING,
    ExperimentSummary,
    _experiment_warnings,
    _ranking_warnings,
    aggregate,
    overlaps,
    varying_keys,
)
from llem.stats import KEY_METRICS, METRIC_BY_NAME, Stat, describe
from llem.study import design_hash, study_from_data
from llem_agent.contract import RESULT_FILE
from tests.synthetic import make_study_dir

# Student's t, 97.5th percentile, from printed tables: 2 and 4 degrees of freedom.
T_975_DF2 = 4.302652729911275
T_975_DF4 = 2.7764451051977987

# --- the 95% interval --------------------------------------------------------------------


def test_the_interval_of_five_values_uses_t_with_four_degrees_of_freedom():
    # 2 4 4 5 10: mean 25 / 5 = 5; squared deviations 9 1 1 0 25 = 36; variance 36 / 4 = 9,
    # std 3; CV 3 / 5 = 0.6; half width t(0.975, 4) x 3 / sqrt(5).
    stat = describe([2.0, 4.0, 4.0, 5.0, 10.0])
    half = T_975_DF4 * 3.0 / math.sqrt(5)
    assert (stat.n, stat.mean, stat.std, stat.cv) == (5, pytest.approx(5.0), pytest.approx(3.0), pytest.approx(0.6))
    assert stat.ci95_low == pytest.approx(5.0 - half)
    assert stat.ci95_high == pytest.approx(5.0 + half)
    assert stat.half_width() == pytest.approx(half)
    assert stat.half_width(1000.0) == pytest.approx(half * 1000.0)  # shown in ms


def test_the_cv_of_a_negative_mean_is_positive_and_a_zero_mean_has_none():
    # -2 -4 -6: mean -4, std 2, CV 2 / |-4| = 0.5.
    stat = describe([-2.0, -4.0, -6.0])
    assert stat.cv == pytest.approx(0.5)
    half = T_975_DF2 * 2.0 / math.sqrt(3)
    assert (stat.ci95_low, stat.ci95_high) == pytest.approx((-4.0 - half, -4.0 + half))
    zero = describe([-1.0, 1.0])
    assert zero.mean == 0.0 and zero.cv is None and zero.std == pytest.approx(math.sqrt(2))
    assert Stat(n=1, mean=3.0).half_width() is None


def test_identical_cycles_have_a_zero_width_interval():
    stat = describe([7.0, 7.0, 7.0, None, float("inf")])  # None and infinity are not values
    assert (stat.n, stat.mean, stat.std, stat.cv, stat.ci95_low, stat.ci95_high) == (3, 7.0, 0.0, 0.0, 7.0, 7.0)


# --- statistics across cycles, from a study directory ------------------------------------


def _rewrite(study: Path, run_id: str, **values: Any) -> None:
    """Set metrics of one run's result.json (dotted paths) to values chosen for the test."""
    path = study / "runs" / run_id / RESULT_FILE
    result = json.loads(path.read_text())
    for dotted, value in values.items():
        node = result
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    path.write_text(json.dumps(result))


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """Two experiments x three cycles with every key metric set by hand."""
    study = make_study_dir(tmp_path, batch_sizes=(1, 2), dtypes=("bfloat16",), n_cycles=3, failed_runs=0,
                           telemetry=False)  # fmt: skip
    tokens_per_s = {1: (90.0, 100.0, 110.0), 2: (170.0, 200.0, 230.0)}
    energy_j = {1: (3600.0, 3600.0, 3600.0), 2: (1000.0, 2000.0, 3000.0)}
    for experiment in (1, 2):
        for cycle in (1, 2, 3):
            flags = [{"code": "throttled", "message": "m"}] if (experiment, cycle) in ((2, 1), (2, 3)) else []
            _rewrite(
                study, f"e{experiment:03d}-c{cycle}",
                throughput__output_tokens_per_s=tokens_per_s[experiment][cycle - 1],
                energy__energy_j=energy_j[experiment][cycle - 1],
                energy__adjusted_energy_j=energy_j[experiment][cycle - 1] / 2,
                energy__j_per_output_token=energy_j[experiment][cycle - 1] / 1000,
                energy__flags=flags,
                output_tokens=1000,
                latency__e2e_s__p50=0.5,
            )  # fmt: skip
    return study


def test_each_experiments_statistics_over_its_cycles(study: Path):
    summary = aggregate(study)
    one, two = summary.experiments
    assert (one.index, one.runs, one.completed, two.index) == (1, 3, 3, 2)
    # Experiment 1, output tokens/s 90 100 110: mean 100, std sqrt((100 + 0 + 100) / 2) = 10,
    # CV 0.1, half width t(0.975, 2) x 10 / sqrt(3).
    tps = one.stats["output_tokens_per_s"]
    half = T_975_DF2 * 10.0 / math.sqrt(3)
    assert (tps.n, tps.mean, tps.std, tps.cv) == (3, pytest.approx(100.0), pytest.approx(10.0), pytest.approx(0.1))
    assert (tps.ci95_low, tps.ci95_high) == pytest.approx((100.0 - half, 100.0 + half))
    # Experiment 2: 170 200 230: mean 200, std sqrt((900 + 0 + 900) / 2) = 30, CV 0.15.
    assert two.stats["output_tokens_per_s"].std == pytest.approx(30.0)
    assert two.stats["output_tokens_per_s"].cv == pytest.approx(0.15)
    # Energy 1000 2000 3000 J: mean 2000; above idle, half of it: 1000 J; per output token of
    # 1000: 2 J and 1 J above idle.
    assert two.stats["energy_j"].mean == pytest.approx(2000.0)
    assert two.stats["adjusted_energy_j"].mean == pytest.approx(1000.0)
    assert two.stats["j_per_output_token"].mean == pytest.approx(2.0)
    assert two.stats["adjusted_j_per_output_token"].mean == pytest.approx(1.0)
    assert two.flags == {"throttled": 2}


def test_wall_energy_and_co2e_of_each_run(study: Path):
    summary = aggregate(study)
    # host.json recorded PUE 1.2 and 300 gCO2/kWh: 3600 J at the GPU is 4320 J at the wall,
    # 4320 / 3.6e6 kWh x 300 g = 0.36 g.
    run = next(r for r in summary.runs if r.run_id == "e001-c1")
    assert run.metrics["energy_j"] == 3600.0
    assert run.metrics["wall_energy_j"] == pytest.approx(4320.0)
    assert run.metrics["co2e_g"] == pytest.approx(0.36)
    assert summary.experiments[0].stats["co2e_g"].mean == pytest.approx(0.36)


def test_warnings_name_a_spread_over_ten_percent_and_the_flags(study: Path):
    one, two = aggregate(study).experiments
    # Experiment 1 varies by exactly 10%: no warning; experiment 2 by 15%, and energy per token
    # by 1000 / 2000 = 50% (std of 1 2 3 is 1, mean 2).
    assert one.warnings == []
    assert two.warnings == [
        "output_tokens_per_s varies by 15% (CV) across cycles",
        "j_per_output_token varies by 50% (CV) across cycles",
        "2 run(s) flagged throttled",
    ]


def _summary(index: int, stats: dict[str, Stat], completed: int = 3, flags: dict[str, int] | None = None):
    full = {name: stats.get(name, Stat(n=completed, mean=1.0)) for name in METRIC_BY_NAME}
    return ExperimentSummary(index, "h", "pytorch", "x", {}, 3, completed, full, flags or {})


@pytest.mark.parametrize(("cv", "warned"), [(0.09, False), (0.10, False), (0.11, True), (None, False)])
def test_the_cv_warning_is_over_ten_percent(cv: float | None, warned: bool):
    assert CV_WARNING == 0.10
    for name in KEY_METRICS:
        e = _summary(1, {name: Stat(n=3, mean=10.0, std=1.0, cv=cv, ci95_low=8.0, ci95_high=12.0)})
        assert _experiment_warnings(e) == ([f"{name} varies by 11% (CV) across cycles"] if warned else [])


def test_warnings_for_too_few_completed_runs():
    assert _experiment_warnings(_summary(1, {}, completed=0)) == ["no completed run"]
    assert _experiment_warnings(_summary(1, {}, completed=1)) == [
        "one completed run: no spread or confidence interval (run more cycles)"
    ]
    assert _experiment_warnings(_summary(1, {}, completed=2)) == []
    flagged = _summary(1, {}, flags={"throttled": 1, "short_window": 3})
    assert _experiment_warnings(flagged) == ["3 run(s) flagged short_window", "1 run(s) flagged throttled"]


# --- the ranking -------------------------------------------------------------------------


def _ranked(means_halves: list[tuple[float, float]]) -> list[ExperimentSummary]:
    return [
        _summary(i, dict.fromkeys(KEY_METRICS, Stat(n=3, mean=m, std=1.0, cv=0.01, ci95_low=m - h, ci95_high=m + h)))
        for i, (m, h) in enumerate(means_halves, start=1)
    ]


def test_neighbours_are_compared_in_order_of_their_means_not_of_their_indices():
    # Means 30 10 20, each +- 1: ranked 10 20 30, no two intervals touch. In index order, 30 and
    # 10 would be called neighbours.
    assert _ranking_warnings(_ranked([(30.0, 1.0), (10.0, 1.0), (20.0, 1.0)])) == []
    # 30 +- 6 (24..36), 10 +- 1, 25 +- 1 (24..26): ranked 10, 25, 30; 25 and 30 overlap.
    warnings = _ranking_warnings(_ranked([(30.0, 6.0), (10.0, 1.0), (25.0, 1.0)]))
    assert warnings == [
        f"{name}: 95% intervals overlap for experiments 3 and 1; their order is not significant" for name in KEY_METRICS
    ]


def test_intervals_that_just_touch_overlap_and_a_hair_apart_do_not():
    touching = _ranked([(10.0, 1.0), (12.0, 1.0)])  # 9..11 and 11..13
    assert len(_ranking_warnings(touching)) == len(KEY_METRICS)
    apart = _ranked([(10.0, 1.0), (12.0, 0.999)])  # 9..11 and 11.001..12.999
    assert _ranking_warnings(apart) == []
    one_cycle = [_summary(i, dict.fromkeys(KEY_METRICS, Stat(n=1, mean=5.0))) for i in (1, 2)]
    assert _ranking_warnings(one_cycle) == []  # no interval: nothing to say


def test_more_than_five_ties_are_cut_short():
    many = _ranked([(float(i), 5.0) for i in range(1, 8)])  # 7 overlapping neighbours: 6 ties
    first = _ranking_warnings(many)[0]
    assert first.startswith("output_tokens_per_s: 95% intervals overlap for experiments 1 and 2, 2 and 3, ")
    assert "5 and 6 ...;" in first and "6 and 7" not in first


def test_each_metric_is_ranked_by_its_own_direction():
    directions = {name: METRIC_BY_NAME[name].better for name in METRIC_BY_NAME}
    for name in ("output_tokens_per_s", "total_tokens_per_s", "requests_per_s"):
        assert directions[name] == "higher"
    for name in ("energy_j", "adjusted_energy_j", "j_per_output_token", "j_per_token", "j_per_request",
                 "ttft_p50_s", "itl_p99_s", "e2e_p50_s", "e2e_p90_s", "wall_energy_j", "co2e_g"):  # fmt: skip
        assert directions[name] == "lower"
    assert directions["mean_power_w"] is None and directions["trace_energy_j"] is None


def test_best_first_per_metric_direction():
    from llem.cli_results import _sorted

    rows = [
        _summary(1, {"output_tokens_per_s": Stat(3, 10.0), "j_per_output_token": Stat(3, 0.5)}),
        _summary(2, {"output_tokens_per_s": Stat(3, 30.0), "j_per_output_token": Stat(3, 0.2)}),
        _summary(3, {"output_tokens_per_s": Stat(0, None), "j_per_output_token": Stat(0, None)}),
        _summary(4, {"output_tokens_per_s": Stat(3, 20.0), "j_per_output_token": Stat(3, 0.3)}),
    ]
    order = [e.index for e in _sorted(rows, "output_tokens_per_s", [], reverse=False)]
    assert order == [2, 4, 1, 3]  # higher is better: 30 20 10, the unmeasured last
    assert [e.index for e in _sorted(rows, "j_per_output_token", [], reverse=False)] == [2, 4, 1, 3]  # 0.2 0.3 0.5
    assert [e.index for e in _sorted(rows, "output_tokens_per_s", [], reverse=True)] == [1, 4, 2, 3]


# --- other statistics of results.py -------------------------------------------------------


def test_what_was_swept_and_which_windows_overlapped():
    params = [{"a": 1, "b": "x", "c": [1]}, {"a": 2, "b": "x", "c": [1]}, {"a": 1, "b": "x", "c": [2]}]
    assert varying_keys(params) == ["a", "c"]
    assert varying_keys(params[:1]) == []
    windows = {"r1": (0.0, 10.0), "r2": (10.0, 20.0), "r3": (19.0, 25.0), "r4": (5.0, 6.0)}
    # r1 and r2 only touch (r2 starts as r1 ends); r2 and r3 share 19-20 s; r4 lies inside r1.
    assert overlaps(windows) == {"r1": {"r4"}, "r4": {"r1"}, "r2": {"r3"}, "r3": {"r2"}}
    assert overlaps(windows, {"r1": "a", "r4": "b", "r2": "a", "r3": "a"}) == {"r2": {"r3"}, "r3": {"r2"}}


# --- the study design hash ---------------------------------------------------------------


def _study(models: list[str], tmp_path: Path):
    for name in models:
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "config.json").write_text("{}")
    data = {"name": "order", "engine": "pytorch", "experiments": [{"model": f"./{m}"} for m in models]}
    return study_from_data(data, tmp_path / "study.yaml")


def test_the_design_hash_is_of_the_ordered_config_hashes(tmp_path: Path):
    forward = _study(["a", "b"], tmp_path)
    backward = _study(["b", "a"], tmp_path)
    hashes = [e.config_hash for e in forward.experiments]
    assert [e.config_hash for e in backward.experiments] == hashes[::-1]
    # By hand: SHA-256 of the JSON list of config hashes, compact, first 16 hex characters.
    text = '["' + '","'.join(hashes) + '"]'
    assert forward.design_hash == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert backward.design_hash != forward.design_hash  # the same experiments in another order
    assert design_hash(forward.experiments[:1]) != forward.design_hash
    assert len(forward.design_hash) == 16


# --- the claim protocol's clock ----------------------------------------------------------


class _RecordingEvent(threading.Event):
    waits: ClassVar[list[float]] = []

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is not None:
            _RecordingEvent.waits.append(timeout)
        return super().wait(timeout)


@pytest.mark.parametrize(("stale_after_s", "period_s"), [(300.0, 30.0), (2.0, 0.2), (0.2, 0.05)])
def test_a_claim_is_refreshed_every_tenth_of_its_stale_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stale_after_s: float, period_s: float
):
    # The refresher waits stale / 10 between refreshes (at least 50 ms): ten chances before anyone
    # may break the claim. (A period over the limit would let a live run's claim go stale.)
    monkeypatch.setattr(_RecordingEvent, "waits", [])
    monkeypatch.setattr(claims.threading, "Event", _RecordingEvent)
    board = ClaimBoard(tmp_path, stale_after_s=stale_after_s)
    claim = board.claim("e001-c1")
    assert claim is not None
    with board.keep_alive(claim):
        pass
    assert _RecordingEvent.waits and _RecordingEvent.waits[0] == pytest.approx(period_s)
    assert DEFAULT_STALE_AFTER_S == 300.0


def test_a_claim_is_refreshed_while_the_run_lasts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    refreshed: list[str] = []
    board = ClaimBoard(tmp_path, stale_after_s=1.0)  # refreshed every 0.1 s
    claim = board.claim("e001-c1")
    assert claim is not None
    monkeypatch.setattr(claim, "refresh", lambda: refreshed.append("refresh"))
    with board.keep_alive(claim):
        deadline = threading.Event()
        deadline.wait(0.6)
    assert 2 <= len(refreshed) <= 7


def _seen(content: str, age_s: float) -> Seen:
    return Seen(inode=(1, 2), content=content, age_s=age_s)


@pytest.mark.parametrize(("age_s", "why"), [(59.9, None), (60.0, "stale"), (60.1, "stale")])
def test_a_claim_is_stale_from_its_limit_on(age_s: float, why: str | None):
    assert _seen(owner_token("w"), age_s).why_free(60.0) == why  # a live owner: only age frees it


@pytest.mark.parametrize(("age_s", "why"), [(4.9, None), (5.0, "garbage"), (600.0, "garbage")])
def test_a_claim_without_a_token_is_garbage_after_its_grace(age_s: float, why: str | None):
    assert GARBAGE_GRACE_S == 5.0
    assert _seen("", age_s).why_free(3600.0) == why


def test_what_a_holder_is_said_to_be():
    token = owner_token("worker-7")
    worker, rest = token.split("@", 1)
    host, pid = rest.split(":")[:2]
    assert worker == "worker-7"
    assert _seen(token, 12.4).describe() == f"worker-7@{host}:{pid} (refreshed 12 s ago)"
    assert _seen("\x00garbage", 3.0).describe() == "an unreadable claim (8 bytes, made 3 s ago)"


@pytest.mark.parametrize(
    ("mean", "half", "text"),
    [
        (0.0, None, "0.000"),  # zero has no magnitude: four significant places as for 1
        (0.0, 0.5, "0.000 ± 0.500"),
        (1.0, 0.25, "1.000 ± 0.250"),
        (-0.02003, 0.001, "-0.02003 ± 0.00100"),
        (123456.7, 12.3, "123,457 ± 12"),
        (float("nan"), 1.0, "–"),
        (float("inf"), None, "–"),
    ],
)
def test_a_mean_and_its_interval_to_four_significant_figures(mean: float, half: float | None, text: str):
    from llem.stats import format_mean_ci

    assert format_mean_ci(mean, half) == text
    assert format_mean_ci(0.123456, 0.01, digits=2) == "0.12 ± 0.01"


def test_windows_are_compared_in_order_of_their_starts():
    # A long run (0-100 s) and two short ones inside it: both overlap it, not each other.
    windows = {"short-1": (10.0, 20.0), "short-2": (50.0, 60.0), "long": (0.0, 100.0)}
    assert overlaps(windows) == {"long": {"short-1", "short-2"}, "short-1": {"long"}, "short-2": {"long"}}


def test_a_zero_mean_ranks_first_and_an_interval_edge_at_zero_counts():
    # Means 0.5 0.0 1.05, each +- 0.1: ranked 0.0, 0.5, 1.05, no overlap.
    assert _ranking_warnings(_ranked([(0.5, 0.1), (0.0, 0.1), (1.05, 0.1)])) == []
    # -2..0 and 0..2 touch at zero: overlap; -2..0 and 0.5..2.5 do not.
    assert len(_ranking_warnings(_ranked([(-1.0, 1.0), (1.0, 1.0)]))) == len(KEY_METRICS)
    assert _ranking_warnings(_ranked([(-1.0, 1.0), (1.5, 1.0)])) == []


def test_five_ties_are_all_named():
    five = _ranking_warnings(_ranked([(float(i), 5.0) for i in range(1, 7)]))[0]  # 6 experiments: 5 ties
    assert five == (
        "output_tokens_per_s: 95% intervals overlap for experiments 1 and 2, 2 and 3, 3 and 4, 4 and 5, 5 and 6; "
        "their order is not significant"
    )


def test_every_run_keeps_its_status_and_failure(tmp_path: Path):
    import hashlib as _hashlib

    study = make_study_dir(tmp_path, batch_sizes=(1, 2), dtypes=("bfloat16",), n_cycles=2, failed_runs=1,
                           energy=False, telemetry=False)  # fmt: skip
    summary = aggregate(study)
    (failed,) = [r for r in summary.runs if r.status == "failed"]
    assert (failed.failure_kind, failed.failure_message) == ("oom", "measure: CUDA out of memory (synthetic)")
    assert failed.cycle == int(failed.run_id[-1]) and failed.experiment == int(failed.run_id[1:4])
    assert all(r.wall_s == 60.0 for r in summary.runs)
    done = [r for r in summary.runs if r.status == "completed"]
    assert {r.unavailable_reason for r in done} == {"NVML unavailable (synthetic)"}
    assert summary.energy_unavailable == "NVML unavailable (synthetic)"
    assert all(r.metrics["energy_j"] is None and r.metrics["wall_energy_j"] is None for r in done)
    manifest = json.loads((study / "manifest.json").read_text())
    assert [e.config_hash for e in summary.experiments] == [
        next(r["config_hash"] for r in manifest["runs"] if r["experiment_index"] == i) for i in (0, 1)
    ]
    assert {e.engine for e in summary.experiments} == {"pytorch"}
    assert [e.label for e in summary.experiments] == ["pytorch.batch_size=1", "pytorch.batch_size=2"]
    assert summary.manifest_sha256 == _hashlib.sha256((study / "manifest.json").read_bytes()).hexdigest()


def _windows(study: Path, starts: dict[str, float]) -> None:
    for run_id, start in starts.items():
        _rewrite(study, run_id, timings__window_started_at=start, timings__measure_s=10.0)


def test_runs_measured_at_the_same_time_are_warned_about(study: Path):
    tail = (
        ": they shared this host's power, memory bandwidth and cooling, so compare them with care (run with "
        "--parallel 1 to avoid it)"
    )
    _windows(study, {"e001-c1": 1000.0, "e002-c1": 1005.0, "e001-c2": 2000.0, "e002-c2": 3000.0,
                     "e001-c3": 4000.0, "e002-c3": 5000.0})  # fmt: skip
    warnings = aggregate(study).warnings
    assert (
        warnings[0] == "2 runs were measured while other runs were (e001-c1 with e002-c1, e002-c1 with e001-c1)" + tail
    )
    # Four runs at once: each named with the other three, no "...".
    _windows(study, {"e001-c1": 1000.0, "e002-c1": 1001.0, "e001-c2": 1002.0, "e002-c2": 1003.0})
    four = aggregate(study).warnings[0]
    assert four.startswith("4 runs were measured while other runs were (e001-c1 with e001-c2, e002-c1, e002-c2, ")
    assert four.endswith("e002-c2 with e001-c1, e001-c2, e002-c1)" + tail)
    # Five: the first four named, then "...".
    _windows(study, {"e001-c3": 1004.0})
    five = aggregate(study).warnings[0]
    assert five.startswith("5 runs were measured while other runs were (e001-c1 with e001-c2, e001-c3, ")
    assert five.endswith("e002-c1 with e001-c1, e001-c2, e001-c3, e002-c2 ...)" + tail)
    _windows(study, {run: 1000.0 + 100 * i for i, run in enumerate(["e001-c1", "e002-c1", "e001-c2", "e002-c2",
                                                                    "e001-c3"])})  # fmt: skip
    assert not any("were measured while" in w for w in aggregate(study).warnings)  # 10 s runs 100 s apart


def test_runs_on_other_hosts_never_overlap_and_do_not_hide_later_ones():
    # By start: a (host 1), b (host 2), c (host 1): a and c overlap, b is on another host.
    windows = {"a": (0.0, 10.0), "b": (2.0, 12.0), "c": (5.0, 15.0)}
    hosts = {"a": "node-1", "b": "node-2", "c": "node-1"}
    assert overlaps(windows, hosts) == {"a": {"c"}, "c": {"a"}}


def test_overlaps_on_different_hosts_are_not_warned_about(study: Path):
    manifest = json.loads((study / "manifest.json").read_text())
    for entry in manifest["runs"]:
        entry["host"] = "node-1" if entry["run_id"].endswith("c1") and entry["run_id"].startswith("e001") else "node-2"
    (study / "manifest.json").write_text(json.dumps(manifest))
    _windows(study, {"e001-c1": 1000.0, "e002-c1": 1005.0, "e001-c2": 2000.0, "e002-c2": 3000.0,
                     "e001-c3": 4000.0, "e002-c3": 5000.0})  # fmt: skip
    assert not any("were measured while" in w for w in aggregate(study).warnings)


def test_every_reason_for_missing_energy_is_named_once(study: Path):
    _rewrite(study, "e001-c1", energy__unavailable_reason="no GPU")
    _rewrite(study, "e002-c1", energy__unavailable_reason="NVML unavailable")
    _rewrite(study, "e002-c2", energy__unavailable_reason="no GPU")
    summary = aggregate(study)
    assert summary.energy_unavailable == "NVML unavailable; no GPU"
    assert [r.unavailable_reason for r in summary.runs if r.run_id == "e001-c2"] == [None]


def test_an_experiment_whose_config_is_lost_still_has_its_statistics(study: Path):
    from llem_agent.contract import EXPERIMENT_FILE

    design = json.loads((study / "experiments.json").read_text())
    design["experiments"] = [e for e in design["experiments"] if e["index"] == 0]
    (study / "experiments.json").write_text(json.dumps(design))
    for cycle in (1, 2, 3):
        (study / "runs" / f"e002-c{cycle}" / EXPERIMENT_FILE).unlink()
    one, two = aggregate(study).experiments
    assert (one.engine, two.engine, two.params) == ("pytorch", "?", {})
    assert two.stats["output_tokens_per_s"].mean == pytest.approx(200.0)


def test_a_failed_run_has_no_energy_caveat(tmp_path: Path):
    study = make_study_dir(tmp_path, batch_sizes=(1,), dtypes=("bfloat16",), n_cycles=2, failed_runs=1,
                           telemetry=False)  # fmt: skip
    (failed,) = [r for r in aggregate(study).runs if r.status == "failed"]
    assert failed.unavailable_reason is None and failed.flags == []
