import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llem_agent.metrics import BatchObservation, distribution, latency, request_records, throughput


def test_distribution_of_known_values():
    d = distribution([1.0, 2.0, 3.0, 4.0])
    assert (d.n, d.mean, d.p50, d.min, d.max) == (4, 2.5, 2.5, 1.0, 4.0)
    assert d.p90 == pytest.approx(3.7)
    assert distribution([]).mean is None


def test_records_ttft_e2e_and_inter_token_latency():
    batch = BatchObservation(input_tokens=[4, 6], output_tokens=[3, 1], token_times_s=[[0.5, 0.7, 1.0], [0.5]])
    records = request_records([batch])
    assert [(r.ttft_s, r.e2e_latency_s, r.output_tokens) for r in records] == [(0.5, 1.0, 3), (0.5, 0.5, 1)]
    lat = latency(records)
    assert lat.inter_token_s.n == 2
    assert lat.inter_token_s.mean == pytest.approx(0.25)
    assert lat.ttft_s.p50 == 0.5


def test_token_times_must_match_token_count():
    with pytest.raises(ValueError, match="2 output tokens but 1 token times"):
        request_records([BatchObservation([1], [2], [[0.1]])])


def test_throughput_counts_tokens_over_the_window():
    records = request_records([BatchObservation([10, 10], [5, 15], [[0.1] * 5, [0.1] * 15])])
    tp = throughput(records, 2.0)
    assert (tp.output_tokens_per_s, tp.total_tokens_per_s, tp.requests_per_s) == (10.0, 20.0, 1.0)
    with pytest.raises(ValueError, match="positive"):
        throughput(records, 0)


@given(st.lists(st.floats(min_value=0, max_value=1e3, allow_nan=False), min_size=1, max_size=200))
def test_distribution_is_ordered(values):
    d = distribution(values)
    assert d.min <= d.p50 <= d.p90 <= d.p99 <= d.max
    assert math.isclose(d.mean, sum(values) / len(values), rel_tol=1e-9, abs_tol=1e-9)
