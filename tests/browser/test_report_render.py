"""`llem report` output opened in headless Chromium: every plot is drawn, offline."""

from __future__ import annotations

import subprocess
from html.parser import HTMLParser
from pathlib import Path

from llem.report import pareto_front
from llem.results import summarise
from tests.helpers import run_llem
from tests.synthetic import make_study_dir

PLOTS = ("pareto", "effect-0", "effect-1", "traces")


class PlotCensus(HTMLParser):
    """Per plot div (by id): its classes once plotly ran, its svg layers, and the marker points
    and lines drawn in its plot area (the legend's samples are not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str | None, bool]] = []  # (plot id, inside the legend) per open element
        self.plots: dict[str, dict[str, object]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        current, in_legend = self.stack[-1] if self.stack else (None, False)
        if tag == "div" and a.get("id") in PLOTS:
            current = str(a["id"])
            self.plots[current] = {"classes": classes, "svg": 0, "points": 0, "lines": 0}
        in_legend = in_legend or "legend" in classes
        if tag not in ("br", "img", "input", "meta", "link", "hr"):
            self.stack.append((current, in_legend))
        if current is None or in_legend:
            return
        plot = self.plots[current]
        if tag == "svg" and "main-svg" in classes:
            plot["svg"] = int(str(plot["svg"])) + 1
        if tag == "path" and "point" in classes:
            plot["points"] = int(str(plot["points"])) + 1
        if tag == "path" and "js-line" in classes:
            plot["lines"] = int(str(plot["lines"])) + 1

    def handle_endtag(self, tag: str) -> None:
        if self.stack:
            self.stack.pop()


def render_dom(chromium: str, page: Path) -> str:
    """The DOM after scripts ran; no network (a proxy that does not exist) and a fresh profile."""
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--proxy-server=127.0.0.1:9", f"--user-data-dir={page.parent / 'chromium-profile'}",
         "--virtual-time-budget=15000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_every_plot_is_drawn(tmp_path: Path, chromium: str):
    study = make_study_dir(tmp_path, batch_sizes=(1, 2, 4), dtypes=("bfloat16", "float16"), n_cycles=3)
    proc = run_llem("report", str(study))
    assert proc.returncode == 0, proc.stderr
    census = PlotCensus()
    census.feed(render_dom(chromium, study / "report.html"))
    assert set(census.plots) == set(PLOTS)
    for name, plot in census.plots.items():
        assert "js-plotly-plot" in plot["classes"], f"{name}: plotly did not run"  # type: ignore[operator]
        assert int(str(plot["svg"])) >= 1, f"{name}: no svg drawn"
    summary = summarise(study)
    completed = sum(r.status == "completed" for r in summary.runs)
    means = [(e.stats["output_tokens_per_s"].mean, e.stats["j_per_output_token"].mean) for e in summary.experiments]
    front = pareto_front([(x or 0.0, y or 0.0) for x, y in means])
    # One marker per completed run, per experiment, and per point of the Pareto front.
    assert census.plots["pareto"]["points"] == completed + len(summary.experiments) + len(front)
    # Each swept parameter's plot: one marker per value for each of the three metrics.
    assert census.plots["effect-0"]["points"] == 2 * 3  # dtype: 2 values
    assert census.plots["effect-1"]["points"] == 3 * 3  # batch_size: 3 values
    # Power and temperature: one line each per run with telemetry.
    assert census.plots["traces"]["lines"] == 2 * completed


def test_report_without_energy_plots_latency_and_says_why(tmp_path: Path, chromium: str):
    study = make_study_dir(tmp_path, batch_sizes=(1, 2), dtypes=("bfloat16",), n_cycles=2, energy=False)
    assert run_llem("report", str(study)).returncode == 0
    dom = render_dom(chromium, study / "report.html")
    assert "Energy was not measured (NVML unavailable (synthetic))" in dom
    census = PlotCensus()
    census.feed(dom)
    assert int(str(census.plots["pareto"]["svg"])) >= 1 and int(str(census.plots["pareto"]["points"])) > 0
    assert "No telemetry sidecar" in dom
