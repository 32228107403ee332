"""The numbers users rank by, pinned to values worked out by hand (issue 22, section 2).

Every expected value here is computed in a comment from the inputs, never by the code under
test: a wrong percentile, a gap divided by n instead of n - 1, or a threshold moved by one step
fails a test. Latency and throughput (metrics.py) and the validity flags (telemetry.py).
"""

from __future__ import annotations

import pytest

from llem_agent.contract import PrefixCacheReport
from llem_agent.metrics import (
    BatchObservation,
    distribution,
    latency,
    prefix_cache_flags,
    prefix_cache_report,
    request_records,
    throughput,
    untimed_reasons,
)
from llem_agent.telemetry import (
    THERMAL_OR_HW_SLOWDOWN,
    Sample,
    WindowFacts,
    downsample,
    integrate_j,
    max_gap_s,
    power_capped_fraction,
    temperature_slope_c_per_s,
    throttle_events,
    validity_flags,
    window_samples,
)

# --- percentiles -------------------------------------------------------------------------


def test_percentiles_are_linearly_interpolated_between_order_statistics():
    # Sorted: 1 2 3 4 10 (n = 5); the q-th percentile sits at rank (n - 1) q = 4 q.
    # p50: rank 2.0 -> 3.  p90: rank 3.6 -> 4 + 0.6 x (10 - 4) = 7.6.
    # p99: rank 3.96 -> 4 + 0.96 x 6 = 9.76 (p95 would be 8.8). Mean 20 / 5 = 4.
    d = distribution([10.0, 1.0, 4.0, 2.0, 3.0])
    assert d.n == 5
    assert d.mean == pytest.approx(4.0)
    assert d.p50 == pytest.approx(3.0)
    assert d.p90 == pytest.approx(7.6)
    assert d.p99 == pytest.approx(9.76)
    assert (d.min, d.max) == (1.0, 10.0)


def test_percentiles_of_one_value_and_of_none():
    one = distribution([0.25])
    assert (one.n, one.mean, one.p50, one.p90, one.p99, one.min, one.max) == (1, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25)
    empty = distribution([])
    assert (empty.n, empty.mean, empty.p50, empty.p90, empty.p99, empty.min, empty.max) == (0, *[None] * 6)


# --- TTFT, inter-token latency, end-to-end -----------------------------------------------

# Three requests of one static batch, token times since the batch started:
#   A: 0.2 0.5 0.9 1.0 (4 tokens): TTFT 0.2, gaps 0.3 0.4 0.1, e2e 1.0
#   B: 0.3 0.7 (2 tokens): TTFT 0.3, gap 0.4, e2e 0.7
#   C: 0.25 (1 token): TTFT 0.25, no gap, e2e 0.25
BATCH = BatchObservation(
    input_tokens=[10, 20, 30], output_tokens=[4, 2, 1], token_times_s=[[0.2, 0.5, 0.9, 1.0], [0.3, 0.7], [0.25]]
)


def test_each_request_has_its_ttft_and_e2e():
    records = request_records([BATCH])
    assert [r.index for r in records] == [0, 1, 2]
    assert [r.ttft_s for r in records] == [0.2, 0.3, 0.25]
    assert [r.e2e_latency_s for r in records] == [1.0, 0.7, 0.25]
    assert [(r.input_tokens, r.output_tokens) for r in records] == [(10, 4), (20, 2), (30, 1)]
    assert all(r.token_times_complete for r in records)


def test_latency_distributions_of_a_batch():
    lat = latency(request_records([BATCH]))
    # TTFT 0.2 0.3 0.25: mean 0.75 / 3 = 0.25; sorted 0.2 0.25 0.3, p50 0.25, p90 at rank 1.8:
    # 0.25 + 0.8 x 0.05 = 0.29.
    assert lat.ttft_s.n == 3
    assert lat.ttft_s.mean == pytest.approx(0.25)
    assert lat.ttft_s.p50 == pytest.approx(0.25)
    assert lat.ttft_s.p90 == pytest.approx(0.29)
    # Inter-token gaps 0.3 0.4 0.1 0.4 (a request's first token has no gap before it): n = 4,
    # mean 1.2 / 4 = 0.3; sorted 0.1 0.3 0.4 0.4, p50 at rank 1.5: 0.35; max 0.4, min 0.1.
    assert lat.inter_token_s.n == 4
    assert lat.inter_token_s.mean == pytest.approx(0.3)
    assert lat.inter_token_s.p50 == pytest.approx(0.35)
    assert (lat.inter_token_s.min, lat.inter_token_s.max) == pytest.approx((0.1, 0.4))
    assert lat.inter_token_source == "token_gaps"
    # e2e 1.0 0.7 0.25: mean 1.95 / 3 = 0.65, p50 0.7.
    assert lat.e2e_s.n == 3
    assert lat.e2e_s.mean == pytest.approx(0.65)
    assert lat.e2e_s.p50 == pytest.approx(0.7)
    assert lat.ttft_missing_reason is None


def test_inter_token_latency_from_first_and_last_token_divides_by_n_minus_one():
    # The engine gave only [first, last]: 5 tokens from 0.2 s to 1.0 s are 4 gaps of
    # (1.0 - 0.2) / (5 - 1) = 0.2 s (dividing by n would say 0.16). 3 tokens from 0.1 s to
    # 0.5 s: 0.4 / 2 = 0.2 s. One token: no gap at all.
    batch = BatchObservation(
        input_tokens=[1, 1, 1], output_tokens=[5, 3, 1], token_times_s=[[0.2, 1.0], [0.1, 0.5], [0.3]], complete=False
    )
    records = request_records([batch])
    assert [r.token_times_complete for r in records] == [False, False, False]
    assert [r.e2e_latency_s for r in records] == [1.0, 0.5, 0.3]
    lat = latency(records)
    assert lat.inter_token_s.n == 2
    assert lat.inter_token_s.mean == pytest.approx(0.2)
    assert lat.inter_token_s.max == pytest.approx(0.2)
    assert lat.inter_token_source == "request_means"


def test_gaps_and_request_means_together_are_mixed():
    partial = BatchObservation(input_tokens=[1], output_tokens=[3], token_times_s=[[0.1, 0.7]], complete=False)
    lat = latency(request_records([BATCH, partial]))
    # Gaps 0.3 0.4 0.1 0.4 and (0.7 - 0.1) / 2 = 0.3: n = 5, mean 1.5 / 5 = 0.3.
    assert lat.inter_token_s.n == 5
    assert lat.inter_token_s.mean == pytest.approx(0.3)
    assert lat.inter_token_source == "mixed"


def test_an_untimed_request_adds_no_ttft_and_ends_when_the_call_returned():
    batch = BatchObservation(
        input_tokens=[1, 1], output_tokens=[2, 3], token_times_s=[[0.4, 0.6], []], untimed_end_s=1.5
    )
    records = request_records([batch])
    assert [r.ttft_s for r in records] == [0.4, None]
    assert [r.e2e_latency_s for r in records] == [0.6, 1.5]
    assert [r.token_times_complete for r in records] == [True, False]
    lat = latency(records, untimed_reasons([batch]))
    assert (lat.ttft_s.n, lat.ttft_s.mean) == (1, 0.4)
    assert lat.inter_token_s.n == 1 and lat.inter_token_s.mean == pytest.approx(0.2)
    assert lat.e2e_s.mean == pytest.approx(1.05)  # (0.6 + 1.5) / 2
    assert lat.ttft_missing_reason is not None
    assert lat.ttft_missing_reason.startswith("1 of 2 requests have no token times (the engine returned no request")


def test_untimed_reasons_only_for_requests_that_generated_and_have_no_times():
    timed = BatchObservation(
        input_tokens=[1, 1], output_tokens=[2, 0], token_times_s=[[0.1, 0.2], []], untimed_end_s=1.0
    )
    assert untimed_reasons([timed]) == []  # the empty request generated nothing: nothing is missing
    one = BatchObservation(
        input_tokens=[1], output_tokens=[1], token_times_s=[[]], untimed_end_s=1.0, untimed_reason="beam search"
    )
    assert untimed_reasons([one, one, timed]) == ["beam search"]
    with pytest.raises(ValueError, match=r"zip\(\) argument 2 is longer"):
        untimed_reasons([BatchObservation(input_tokens=[1], output_tokens=[1, 2], token_times_s=[[0.1]])])


def test_a_request_with_no_output_token_ends_at_zero():
    records = request_records([BatchObservation(input_tokens=[7], output_tokens=[0], token_times_s=[[]])])
    assert (records[0].ttft_s, records[0].e2e_latency_s) == (None, 0.0)
    assert latency(records).ttft_missing_reason is None  # nothing was generated, so nothing is missing


# --- throughput --------------------------------------------------------------------------


def test_throughput_over_the_window():
    # Output 4 + 2 + 1 = 7 tokens, input 10 + 20 + 30 = 60, 3 requests, over 2 s:
    # 3.5 output tokens/s, 67 / 2 = 33.5 tokens/s, 1.5 requests/s.
    tp = throughput(request_records([BATCH]), 2.0)
    assert tp.output_tokens_per_s == pytest.approx(3.5)
    assert tp.total_tokens_per_s == pytest.approx(33.5)
    assert tp.requests_per_s == pytest.approx(1.5)
    with pytest.raises(ValueError, match="positive"):
        throughput([], -1.0)


# --- prefix cache ------------------------------------------------------------------------


def _cache_report(hits: list[int | None], warm: bool = False) -> PrefixCacheReport:
    batch = BatchObservation(
        input_tokens=[100] * len(hits), output_tokens=[1] * len(hits), token_times_s=[[0.1]] * len(hits),
        cached_tokens=hits,
    )  # fmt: skip
    return prefix_cache_report(
        request_records([batch]), warm=warm, warmup_prompts=None, engine_cache=True, reset=None if warm else True
    )


def test_prefix_cache_hit_just_below_at_and_above_nothing_served():
    none = _cache_report([0, 0, 0])
    assert (none.prompt_tokens, none.cached_prompt_tokens, none.requests_with_cached_tokens) == (300, 0, 0)
    assert (none.mode, none.engine_cache, none.reset_after_warmup, none.warmup_prompts) == ("cold", True, True, None)
    assert prefix_cache_flags(none, 3) == []
    one = _cache_report([0, 1, 0])  # a single token served from the cache is a hit
    assert (one.cached_prompt_tokens, one.requests_with_cached_tokens) == (1, 1)
    assert [f.code for f in prefix_cache_flags(one, 3)] == ["prefix_cache_hit"]
    two = _cache_report([16, 0, 32])
    (flag,) = prefix_cache_flags(two, 3)
    assert flag.code == "prefix_cache_hit"
    assert flag.message.startswith("2 of 3 measured requests were served 48 of 300 prompt tokens")


def test_an_unreported_share_is_no_hit_and_a_warm_cache_is_labelled():
    unknown = _cache_report([None, 5, 0])  # one request unreported: the total is unknown
    assert unknown.cached_prompt_tokens is None and unknown.requests_with_cached_tokens is None
    assert prefix_cache_flags(unknown, 3) == []
    (unreported,) = prefix_cache_flags(_cache_report([None, 5, 0], warm=True), 3)
    assert unreported.message.endswith(": an unreported share served from the cache")
    warm = _cache_report([100, 100, 0], warm=True)
    assert warm.mode == "warm"
    (flag,) = prefix_cache_flags(warm, 3)
    assert flag.code == "prefix_cache_warm" and "200 of 300 prompt tokens" in flag.message


# --- validity flags, each just below, at and just above its threshold --------------------


def facts(**change: float | int | bool | None) -> WindowFacts:
    """A window nothing is wrong with: 10 s, 0.1 s sampling, counter and trace agreeing."""
    base: dict[str, object] = {
        "duration_s": 10.0, "interval_s": 0.1, "counter_j": 100.0, "trace_j": 100.0, "counter_monotonic": True,
        "max_gap_s": 0.1, "throttle_events": 0, "temperature_slope_c_per_s": 0.0,
    }  # fmt: skip
    return WindowFacts(**(base | change))  # type: ignore[arg-type]


def codes(f: WindowFacts) -> list[str]:
    return [flag.code for flag in validity_flags(f)]


def test_a_clean_window_has_no_flag():
    assert codes(facts()) == []


@pytest.mark.parametrize(("duration_s", "flagged"), [(4.99, True), (5.0, False), (5.01, False)])
def test_short_window_below_five_seconds(duration_s: float, flagged: bool):
    assert codes(facts(duration_s=duration_s)) == (["short_window"] if flagged else [])


@pytest.mark.parametrize(("gap_s", "flagged"), [(0.19, False), (0.2, False), (0.21, True)])
def test_sampling_gap_over_twice_the_interval(gap_s: float, flagged: bool):
    assert codes(facts(max_gap_s=gap_s)) == (["sampling_gap"] if flagged else [])


@pytest.mark.parametrize(
    ("trace_j", "flagged"),
    [
        (94.9, True),  # trace 5.1% below the counter
        (95.0, False),  # exactly 5%
        (95.1, False),
        (104.9, False),
        (105.0, False),  # exactly 5% above
        (105.1, True),  # trace 5.1% above the counter
    ],
)
def test_counter_trace_disagreement_over_five_percent_either_way(trace_j: float, flagged: bool):
    assert codes(facts(counter_j=100.0, trace_j=trace_j)) == (["counter_trace_disagree"] if flagged else [])


def test_disagreement_is_a_share_of_the_counter_and_needs_both():
    # 1000 J counter vs 1051 J trace: 5.1% of the counter (4.85% of the trace, which is not it).
    (flag,) = validity_flags(facts(counter_j=1000.0, trace_j=1051.0))
    assert flag.code == "counter_trace_disagree" and flag.message == "counter 1000.00 J vs power trace 1051.00 J (5.1%)"
    assert codes(facts(counter_j=None, trace_j=50.0)) == []
    assert codes(facts(counter_j=100.0, trace_j=None)) == []
    assert codes(facts(counter_j=0.0, trace_j=50.0)) == []  # no counter energy: nothing to compare with


@pytest.mark.parametrize(
    ("slope", "flagged"), [(0.99, False), (1.0, False), (1.01, True), (-1.0, False), (-1.01, True)]
)
def test_temperature_drift_over_one_degree_per_second_either_way(slope: float, flagged: bool):
    assert codes(facts(temperature_slope_c_per_s=slope)) == (["temperature_drift"] if flagged else [])


@pytest.mark.parametrize(("events", "flagged"), [(0, False), (1, True), (7, True)])
def test_throttled_from_one_sample_on(events: int, flagged: bool):
    assert codes(facts(throttle_events=events)) == (["throttled"] if flagged else [])


@pytest.mark.parametrize(("age_s", "flagged"), [(99.99, False), (100.0, False), (100.01, True), (None, False)])
def test_stale_baseline_older_than_its_ttl(age_s: float | None, flagged: bool):
    assert codes(facts(baseline_age_s=age_s, baseline_ttl_s=100.0)) == (["stale_baseline"] if flagged else [])
    assert codes(facts(baseline_age_s=age_s, baseline_ttl_s=None)) == []


def test_counter_reset_and_the_flags_messages():
    assert codes(facts(counter_monotonic=False)) == ["counter_reset"]
    every = validity_flags(
        facts(duration_s=3.0, max_gap_s=0.5, counter_monotonic=False, throttle_events=2, temperature_slope_c_per_s=1.5,
              counter_j=100.0, trace_j=80.0, baseline_age_s=7300.0, baseline_ttl_s=7200.0)
    )  # fmt: skip
    assert [(f.code, f.message) for f in every] == [
        ("short_window", "measured window 3.00 s < 5 s"),
        ("sampling_gap", "longest gap between samples 0.500 s > 2 x interval 0.100 s"),
        ("counter_reset", "the energy counter reset or went backwards"),
        ("throttled", "2 samples with thermal or hardware clock slowdown (reasons 0xe8)"),
        (
            "temperature_drift",
            "temperature still moving +1.50 C/s over the window's last third (more than 1.0 C/s: not at a plateau)",
        ),
        ("counter_trace_disagree", "counter 100.00 J vs power trace 80.00 J (20.0%)"),
        ("stale_baseline", "idle baseline is 7300 s old"),
    ]


# --- what the flags are computed from ----------------------------------------------------


def every(step_s: float, start_s: float, end_s: float, skip: tuple[float, float] = (0.0, 0.0)) -> list[Sample]:
    """Samples of 100 W every ``step_s`` from ``start_s`` to ``end_s``, none strictly inside ``skip``."""
    n = round((end_s - start_s) / step_s)
    times = [round(start_s + i * step_s, 9) for i in range(n + 1)]
    return [Sample(t, 0, 100.0) for t in times if not skip[0] < t < skip[1]]


@pytest.mark.parametrize(
    ("samples", "gap_s"),
    [
        (every(0.1, 0.0, 10.0), 0.1),
        (every(0.1, 0.5, 10.0), 0.5),  # nothing in the window's first 0.5 s
        (every(0.1, 0.0, 9.6), 0.4),  # nothing in its last 0.4 s
        (every(0.1, 0.0, 10.0, skip=(4.0, 4.3)), 0.3),  # 4.1 and 4.2 missing: 4.0 -> 4.3
        (every(0.1, -1.0, 11.0, skip=(-0.05, 0.35)), 0.4),  # the window opens at 0, the next sample at 0.4
        ([], 10.0),  # no sample at all: the whole window is one gap
    ],
)
def test_the_longest_gap_counts_the_windows_edges(samples: list[Sample], gap_s: float):
    assert max_gap_s(samples, 0.0, 10.0) == pytest.approx(gap_s)


def test_a_gap_at_either_edge_of_a_real_window_is_flagged():
    from llem_agent.energy import WindowWork, energy_report

    work = WindowWork(output_tokens=10, input_tokens=10, n_requests=1, batch_spans=[])
    for trace in (every(0.1, 0.3, 10.0), every(0.1, 0.0, 9.7), every(0.1, 0.0, 10.0, skip=(5.0, 5.3))):
        r = energy_report(["H100"], trace, start_mj=[0], end_mj=[1_000_000], window=(0.0, 10.0), interval_s=0.1,
                          work=work)  # fmt: skip
        assert [f.code for f in r.flags] == ["sampling_gap"]  # 0.3 s > 2 x 0.1 s; 1000 J on both sides
    clean = energy_report(["H100"], every(0.1, 0.0, 10.0), start_mj=[0], end_mj=[1_000_000], window=(0.0, 10.0),
                          interval_s=0.1, work=work)  # fmt: skip
    assert clean.flags == []


def test_window_samples_include_both_edges():
    trace = [Sample(t, 0, 1.0) for t in (0.9, 1.0, 1.5, 2.0, 2.1)]
    assert [s.time_s for s in window_samples(trace, 1.0, 2.0)] == [1.0, 1.5, 2.0]


def test_throttle_events_count_only_heat_and_hardware_slowdowns():
    # 0x8 HW slowdown, 0x20 SW thermal, 0x40 HW thermal, 0x80 power brake: 0xe8. The software
    # power cap 0x4, idle 0x1, application clocks 0x2, sync boost 0x10, display 0x100: routine.
    assert THERMAL_OR_HW_SLOWDOWN == 0xE8
    reasons = [0x8, 0x20, 0x40, 0x80, 0x4 | 0x40, 0x1, 0x2, 0x4, 0x10, 0x100, None]
    samples = [Sample(float(i), 0, 300.0, throttle_reasons=r) for i, r in enumerate(reasons)]
    assert throttle_events(samples) == 5
    # The power cap: 2 (0x44 and 0x4) of the 10 samples that report reasons.
    assert power_capped_fraction(samples) == pytest.approx(0.2)
    assert power_capped_fraction([Sample(0.0, 0, 1.0)]) == 0.0


def temps(pairs: list[tuple[float, float]]) -> list[Sample]:
    return [Sample(t, 0, 300.0, temperature_c=c) for t, c in pairs]


def test_temperature_slope_over_the_last_third():
    # 0..12 s: 40 C until 7 s, then 41 43 44 46 47 at 8..12 s. The last third of 12 s is 4 s
    # (more than the 3 s minimum): the readings from 8 s on. Mean time 10, mean temperature
    # 221 / 5 = 44.2; deviations -2 -1 0 1 2 and -3.2 -1.2 -0.2 1.8 2.8: products 6.4 + 1.2 +
    # 0 + 1.8 + 5.6 = 15, spread 4 + 1 + 0 + 1 + 4 = 10: 1.5 C/s.
    samples = temps(
        [(float(t), 40.0) for t in range(8)] + [(8.0, 41.0), (9.0, 43.0), (10.0, 44.0), (11.0, 46.0), (12.0, 47.0)]
    )
    assert temperature_slope_c_per_s(samples) == pytest.approx(1.5)


def test_temperature_slope_over_at_least_three_seconds():
    # 0..9 s: the last third is 3 s, the minimum: readings from 6 s on, 52 55 56 58 C. Mean
    # time 7.5, mean temperature 221 / 4 = 55.25; deviations -1.5 -0.5 0.5 1.5 and -3.25
    # -0.25 0.75 2.75: products 4.875 + 0.125 + 0.375 + 4.125 = 9.5, spread 5: 1.9 C/s.
    samples = temps([(float(t), 60.0) for t in range(6)] + [(6.0, 52.0), (7.0, 55.0), (8.0, 56.0), (9.0, 58.0)])
    assert temperature_slope_c_per_s(samples) == pytest.approx(1.9)
    # A 6 s window: a third is 2 s, so the 3 s minimum holds: 3..6 s, 50 53 54 56 C. Mean time
    # 4.5, mean temperature 213 / 4 = 53.25; products 4.875 + 0.125 + 0.375 + 4.125 = 9.5,
    # spread 5: 1.9 C/s (the last 2 s alone would say 1.5).
    short = temps([(0.0, 90.0), (1.0, 10.0), (2.0, 70.0), (3.0, 50.0), (4.0, 53.0), (5.0, 54.0), (6.0, 56.0)])
    assert temperature_slope_c_per_s(short) == pytest.approx(1.9)


def test_temperature_slope_on_a_clock_that_does_not_start_at_zero():
    # The 12 s window above, read 100 s later on the monotonic clock: the same 1.5 C/s.
    samples = temps(
        [(100.0 + t, 40.0) for t in range(8)]
        + [(108.0, 41.0), (109.0, 43.0), (110.0, 44.0), (111.0, 46.0), (112.0, 47.0)]
    )
    assert temperature_slope_c_per_s(samples) == pytest.approx(1.5)
    # Readings 0.1 s apart (a spread of 0.02 s^2): 40.0 40.3 40.6 C is 3 C/s.
    fast = temps([(50.0, 40.0), (50.1, 40.3), (50.2, 40.6)])
    assert temperature_slope_c_per_s(fast) == pytest.approx(3.0)


def test_temperature_slope_needs_three_readings_in_the_tail():
    assert temperature_slope_c_per_s(temps([(0.0, 40.0), (1.0, 50.0)])) == 0.0
    assert temperature_slope_c_per_s(temps([(0.0, 40.0), (1.0, 42.0), (2.0, 44.0)])) == pytest.approx(2.0)
    # Eight readings, but only two in the last 3 s (8 and 9 s): no slope.
    sparse = temps([(float(t), 40.0 + 5 * t) for t in (0, 1, 2, 3, 4, 5)] + [(8.0, 90.0), (9.0, 99.0)])
    assert temperature_slope_c_per_s(sparse) == 0.0
    assert temperature_slope_c_per_s([Sample(float(t), 0, 1.0) for t in range(10)]) == 0.0  # no temperature
    same_time = temps([(5.0, 40.0), (5.0, 41.0), (5.0, 42.0)])
    assert temperature_slope_c_per_s(same_time) == 0.0


def test_integration_interpolates_at_the_edges_and_holds_beyond_the_samples():
    trace = [Sample(1.0, 0, 100.0), Sample(2.0, 0, 300.0), Sample(4.0, 0, 300.0)]
    # 0.5-1.0 s: held at 100 W (50 J); 1.0-1.5 s: 100 -> 200 W (75 J). Total 125 J.
    assert integrate_j(trace, 0.5, 1.5) == pytest.approx(125.0)
    # 1.5-2.0: 200 -> 300 (125 J); 2-4: 600 J; 4-5: held at 300 (300 J). Total 1025 J.
    assert integrate_j(trace, 1.5, 5.0) == pytest.approx(1025.0)
    assert integrate_j(trace, 3.0, 3.0) == 0.0
    assert integrate_j(trace, 3.0, 2.0) == 0.0
    assert integrate_j([], 0.0, 1.0) == 0.0
    # Two samples at one time: the later one's power from there on (no division by zero).
    twin = [Sample(0.0, 0, 100.0), Sample(1.0, 0, 100.0), Sample(1.0, 0, 300.0), Sample(2.0, 0, 300.0)]
    assert integrate_j(twin, 0.5, 1.5) == pytest.approx(200.0)  # 0.5 x 100 + 0.5 x 300


def test_downsampling_to_one_row_per_device_and_second():
    samples = [
        Sample(10.0, 0, 100.0, 50.0, 1000.0, 8000.0, 90.0, throttle_reasons=0x4),
        Sample(10.5, 0, 200.0, 52.0, 3000.0, 8000.0, None, throttle_reasons=0x40),
        Sample(10.2, 1, 50.0, None, None, 4000.0, 10.0),
        Sample(11.0, 0, 300.0, 54.0, 2000.0, 8000.0, 70.0, throttle_reasons=None),
    ]
    rows = downsample(samples, start_s=10.0)
    assert rows == [
        # second 0, device 0: means of 100/200 W, 50/52 C, 1000/3000 MiB; 90 % alone; 0x4 | 0x40
        {"timestamp_s": 0.0, "gpu_index": 0, "power_w": 150.0, "temperature_c": 51.0, "memory_used_mb": 2000.0,
         "memory_total_mb": 8000.0, "sm_utilisation_pct": 90.0, "throttle_reasons": 0x44},
        {"timestamp_s": 0.0, "gpu_index": 1, "power_w": 50.0, "temperature_c": None, "memory_used_mb": None,
         "memory_total_mb": 4000.0, "sm_utilisation_pct": 10.0, "throttle_reasons": None},
        {"timestamp_s": 1.0, "gpu_index": 0, "power_w": 300.0, "temperature_c": 54.0, "memory_used_mb": 2000.0,
         "memory_total_mb": 8000.0, "sm_utilisation_pct": 70.0, "throttle_reasons": None},
    ]  # fmt: skip
    # Devices in index order within a second, whatever order they were read in; a reading
    # before the start falls in second -1.
    swapped = downsample([Sample(10.1, 1, 50.0), Sample(10.2, 0, 70.0), Sample(9.5, 0, 10.0)], start_s=10.0)
    assert [(r["timestamp_s"], r["gpu_index"], r["power_w"]) for r in swapped] == [
        (-1.0, 0, 10.0),
        (0.0, 0, 70.0),
        (0.0, 1, 50.0),
    ]
    half = downsample(samples[:2], start_s=10.0, resolution_s=0.5)
    assert [(r["timestamp_s"], r["power_w"]) for r in half] == [(0.0, 100.0), (0.5, 200.0)]


# --- the edges of the request records ------------------------------------------------------


def test_token_times_are_kept_to_the_microsecond():
    (record,) = request_records([BatchObservation(input_tokens=[1], output_tokens=[1], token_times_s=[[0.12345678]])])
    assert record.token_times_s == [0.123457]
    assert record.ttft_s == 0.12345678  # the TTFT itself is not rounded


def test_a_batch_whose_lists_disagree_is_refused():
    with pytest.raises(ValueError, match=r"zip\(\) argument 3 is shorter"):
        request_records([BatchObservation(input_tokens=[1, 1], output_tokens=[1, 1], token_times_s=[[0.1]])])


def test_untimed_requests_of_one_token_and_of_none():
    batch = BatchObservation(
        input_tokens=[1, 1, 1], output_tokens=[1, 0, 2], token_times_s=[[], [], [0.2, 0.5]], untimed_end_s=2.0,
        untimed_reason="beam search reports no per-token times (only when the batch returned)",
    )  # fmt: skip
    records = request_records([batch])
    # One token, no time: untimed, ends at 2.0 s. No token: nothing to time, ends at 0.
    assert [(r.ttft_s, r.e2e_latency_s, r.token_times_complete) for r in records] == [
        (None, 2.0, False),
        (None, 0.0, True),
        (0.2, 0.5, True),
    ]
    lat = latency(records, untimed_reasons([batch]))
    assert lat.ttft_missing_reason == (
        "1 of 3 requests have no token times (beam search reports no per-token times (only when the batch "
        "returned)): their TTFT and inter-token latency are missing, and their end-to-end latency is when the "
        "generate call returned"
    )
    two = latency(records, ["first reason", "second reason"]).ttft_missing_reason
    assert two is not None and "(first reason; second reason)" in two


def test_two_tokens_known_only_at_first_and_last_are_one_gap():
    batch = BatchObservation(input_tokens=[1], output_tokens=[2], token_times_s=[[0.25, 0.75]], complete=False)
    lat = latency(request_records([batch]))
    assert (lat.inter_token_s.n, lat.inter_token_s.mean) == (1, pytest.approx(0.5))  # (0.75 - 0.25) / 1
