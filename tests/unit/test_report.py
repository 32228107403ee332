"""The HTML report as a reader meets it (rendered in Chromium by tests/browser)."""

from __future__ import annotations

import re
from pathlib import Path

from llem.report import PLOTLY_BASIC, _bars, render
from llem.results import summarise
from tests.synthetic import make_study_dir


def test_error_bars_never_reach_below_zero():
    bars = _bars([10.0, 1.0, None], [3.0, 5.0, 2.0])  # a two-cycle interval wider than its mean
    assert bars["array"] == [3.0, 5.0, 2.0]
    assert bars["arrayminus"] == [3.0, 1.0, 0.0] and bars["symmetric"] is False


def test_every_plotted_error_bar_stops_at_zero(tmp_path: Path):
    page = render(summarise(make_study_dir(tmp_path, n_cycles=2)))
    bars = [b for b in re.findall(r'"error_[xy]":\{[^}]*\}', page) if '"array"' in b]  # not the theme's
    assert bars
    for bar in bars:
        assert '"arrayminus"' in bar and '"symmetric":false' in bar


def test_the_table_speaks_the_cli_s_units_and_the_engine_is_named_once(tmp_path: Path):
    page = render(summarise(make_study_dir(tmp_path, n_cycles=2)))
    assert "<th>e2e p50 ms</th>" in page and "<th>TTFT p50 ms</th>" in page
    assert "engine version" not in page


def test_a_study_where_every_run_failed_says_so_instead_of_an_empty_plot(tmp_path: Path):
    study = make_study_dir(tmp_path, batch_sizes=(1,), dtypes=("bfloat16",), n_cycles=2, failed_runs=2)
    page = render(summarise(study))
    assert "No run completed, so there is nothing to plot" in page
    assert "On the Pareto front" not in page


def test_the_report_inlines_the_basic_plotly_bundle_of_plotly_py_s_version(tmp_path: Path):
    from plotly.offline import get_plotlyjs_version

    header = PLOTLY_BASIC.read_text(encoding="utf-8")[:200]
    assert f"plotly.js (basic - minified) v{get_plotlyjs_version()}" in header
    page = render(summarise(make_study_dir(tmp_path, batch_sizes=(1, 4), dtypes=("bfloat16",), n_cycles=2)))
    assert len(page.encode()) < 2_000_000  # the full bundle made a 4-run report 4.8 MB
    assert "Plotly" in page
