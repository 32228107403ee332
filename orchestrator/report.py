"""``llem report``: one self-contained HTML file per study (plotly.js inlined: opens offline).

Sections: the energy/throughput trade-off with its Pareto front, the effect of each swept
parameter with 95% confidence intervals, power and temperature traces from the telemetry
sidecars, validity warnings and runs that did not complete, and the environment.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llem_agent.contract import AgentEnvironment

from . import __version__
from .display import column_for, format_stat
from .results import StudySummary
from .stats import METRIC_BY_NAME, describe
from .studydir import StudyDir
from .summary import SIMULATED_BANNER

# Effect plots per swept parameter: (metric, axis title, scale to display units).
EFFECT_METRICS = (
    ("j_per_output_token", "J / output token", 1.0),
    ("output_tokens_per_s", "output tokens / s", 1.0),
    ("e2e_p50_s", "e2e latency p50 (ms)", 1e3),
)
# The experiments table's metric columns (display.py's headers and scales).
TABLE_METRICS = ("output_tokens_per_s", "j_per_output_token", "energy_j", "mean_power_w", "ttft_p50_s", "e2e_p50_s")
MAX_TRACE_RUNS = 24
MAX_EFFECT_PARAMS = 12
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (x higher is better, y lower is
    better), ordered by x."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], points[i][1]))
    front, best_y = [], math.inf
    for i in order:
        if points[i][1] < best_y:
            front.append(i)
            best_y = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


def _figure_html(fig: Any, div_id: str) -> str:
    return str(fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=_PLOT_CONFIG))


def _bars(means: Sequence[float | None], halves: Sequence[float | None]) -> dict[str, Any]:
    """95% error bars for quantities that cannot be negative (throughput, energy, latency): a
    two-cycle interval can be wider than its mean, and a bar below zero would show the impossible,
    so the lower bar stops at zero (the interval itself is in the tables and summary files)."""
    up = [h or 0.0 for h in halves]
    down = [min(h or 0.0, m) if m is not None and m > 0 else 0.0 for h, m in zip(halves, means, strict=True)]
    return {"type": "data", "symmetric": False, "array": up, "arrayminus": down}


def _tradeoff(summary: StudySummary) -> tuple[str, str]:
    """Energy per output token against throughput (latency when energy was not measured)."""
    import plotly.graph_objects as go

    use_energy = any(e.stats["j_per_output_token"].mean is not None for e in summary.experiments)
    y_name, y_title, y_scale = (
        ("j_per_output_token", "J per output token (lower is better)", 1.0)
        if use_energy
        else ("e2e_p50_s", "end-to-end latency p50, ms (lower is better)", 1e3)
    )
    exps = [e for e in summary.experiments if e.stats["output_tokens_per_s"].mean and e.stats[y_name].mean]
    fig = go.Figure()
    by_index = {e.index: e for e in summary.experiments}
    runs = [r for r in summary.runs if r.status == "completed"]
    if not runs or not exps:
        return "Trade-off", (
            "<p>No run completed, so there is nothing to plot: the runs that did not complete, and why, are "
            "listed under Validity warnings.</p>"
        )
    fig.add_trace(
        go.Scatter(
            x=[r.metrics["output_tokens_per_s"] for r in runs],
            y=[(r.metrics[y_name] or math.nan) * y_scale for r in runs],
            mode="markers",
            name="runs",
            marker={"size": 5, "color": "rgba(120,120,120,0.35)"},
            text=[f"{r.run_id}: {by_index[r.experiment].label}" for r in runs],
            hoverinfo="text+x+y",
        )
    )
    xs = [e.stats["output_tokens_per_s"].mean or 0.0 for e in exps]
    ys = [(e.stats[y_name].mean or 0.0) * y_scale for e in exps]
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="markers",
            name="experiments (mean, 95% CI)",
            marker={"size": 10, "color": "#1f77b4"},
            error_x=_bars(xs, [e.stats["output_tokens_per_s"].half_width() for e in exps]),
            error_y=_bars(ys, [e.stats[y_name].half_width(y_scale) for e in exps]),
            text=[f"#{e.index} {e.label}" for e in exps],
            hoverinfo="text+x+y",
        )
    )
    front = pareto_front(list(zip(xs, ys, strict=True)))
    fig.add_trace(
        go.Scatter(
            x=[xs[i] for i in front],
            y=[ys[i] for i in front],
            mode="lines+markers",
            name="Pareto front",
            line={"color": "#d62728", "width": 2},
            marker={"size": 14, "symbol": "star", "color": "#d62728"},
            text=[f"#{exps[i].index} {exps[i].label}" for i in front],
            hoverinfo="text+x+y",
        )
    )
    fig.update_layout(
        xaxis_title="output tokens / s (higher is better)",
        yaxis_title=y_title,
        height=520,
        margin={"t": 30},
        legend={"orientation": "h"},
    )
    note = ""
    if not use_energy:
        reason = summary.energy_unavailable or "no run measured energy"
        note = (
            f'<p class="warn">Energy was not measured ({html.escape(reason)}); '
            "this plot shows latency against throughput instead.</p>"
        )
    front_list = "".join(f"<li>#{exps[i].index} {html.escape(exps[i].label)}</li>" for i in front)
    body = note + _figure_html(fig, "pareto") + (f"<p>On the Pareto front:</p><ul>{front_list}</ul>" if front else "")
    title = "energy per token" if use_energy else "latency"
    return f"Trade-off: {title} vs throughput", body


def _effects(summary: StudySummary) -> tuple[str, str]:
    """Each swept parameter's effect on energy, throughput and latency: the mean over all
    completed runs at each value (marginal over the other swept parameters), with its 95% CI."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not summary.swept:
        return "Effects of swept parameters", "<p>This study swept no parameter.</p>"
    params = {e.index: e.params for e in summary.experiments}
    done = [r for r in summary.runs if r.status == "completed"]
    metrics = [m for m in EFFECT_METRICS if any(r.metrics[m[0]] is not None for r in done)]
    parts = []
    for number, key in enumerate(summary.swept[:MAX_EFFECT_PARAMS]):
        groups: dict[str, list[int]] = {}
        for pos, r in enumerate(done):
            groups.setdefault(json.dumps(params[r.experiment].get(key)), []).append(pos)
        values = sorted(groups, key=_sort_key)
        fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[m[1] for m in metrics])
        for col, (name, _, scale) in enumerate(metrics, start=1):
            stats = [describe(done[p].metrics[name] for p in groups[v]) for v in values]
            fig.add_trace(
                go.Scatter(
                    x=[_label_value(v) for v in values],
                    y=[None if s.mean is None else s.mean * scale for s in stats],
                    error_y=_bars(
                        [None if s.mean is None else s.mean * scale for s in stats],
                        [s.half_width(scale) for s in stats],
                    ),
                    mode="markers+lines",
                    name=METRIC_BY_NAME[name].label,
                    showlegend=False,
                    text=[f"n={s.n}" for s in stats],
                ),
                row=1,
                col=col,
            )
            fig.update_xaxes(title_text=key, type="category", row=1, col=col)
        fig.update_layout(height=340, margin={"t": 40})
        parts.append(f"<h3>{html.escape(key)}</h3>" + _figure_html(fig, f"effect-{number}"))
    more = len(summary.swept) - MAX_EFFECT_PARAMS
    if more > 0:
        parts.append(f"<p>{more} more swept parameters are in summary.csv.</p>")
    intro = (
        "<p>Mean over every completed run at each value, across the other swept parameters; "
        "error bars are 95% confidence intervals (Student's t).</p>"
    )
    return "Effects of swept parameters", intro + "".join(parts)


def _sort_key(encoded: str) -> tuple[int, float, str]:
    value = json.loads(encoded)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _label_value(encoded: str) -> str:
    value = json.loads(encoded)
    return "null" if value is None else str(value) if not isinstance(value, str) else value


def _traces(summary: StudySummary) -> tuple[str, str]:
    """Power and temperature over the measured window, from each run's telemetry sidecar."""
    import plotly.graph_objects as go
    import pyarrow.parquet as pq
    from plotly.subplots import make_subplots

    found = []
    study = StudyDir(summary.study_dir)
    for r in summary.runs:
        path = study.run(r.run_id).telemetry_file
        if r.status == "completed" and path.exists():
            found.append((r, path))
    title = "Power and temperature traces"
    if not found:
        return title, (
            "<p>No telemetry sidecar in this study (it is recorded on GPUs, with <code>gpu_telemetry</code> on).</p>"
        )
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, subplot_titles=["power (W)", "temperature (°C)"])
    by_index = {e.index: e for e in summary.experiments}
    for r, path in found[:MAX_TRACE_RUNS]:
        try:
            table = pq.read_table(path, columns=["timestamp_s", "gpu_index", "power_w", "temperature_c"]).to_pydict()
        except (OSError, ValueError):
            continue
        for gpu in sorted(set(table["gpu_index"])):
            rows = [i for i, g in enumerate(table["gpu_index"]) if g == gpu]
            name = f"{r.run_id} gpu{gpu}"
            hover = f"{name}: {by_index[r.experiment].label}"
            t = [table["timestamp_s"][i] for i in rows]
            for row, column in ((1, "power_w"), (2, "temperature_c")):
                fig.add_trace(
                    go.Scatter(
                        x=t,
                        y=[table[column][i] for i in rows],
                        mode="lines",
                        name=name,
                        legendgroup=name,
                        showlegend=row == 1,
                        hovertext=hover,
                    ),
                    row=row,
                    col=1,
                )
    fig.update_xaxes(title_text="seconds into the measured window", row=2, col=1)
    fig.update_layout(height=560, margin={"t": 40})
    note = f"<p>First {MAX_TRACE_RUNS} of {len(found)} runs with telemetry.</p>" if len(found) > MAX_TRACE_RUNS else ""
    return title, note + _figure_html(fig, "traces")


def _warnings(summary: StudySummary) -> tuple[str, str]:
    items = [html.escape(w) for w in summary.warnings]
    for e in summary.experiments:
        items += [f"experiment {e.index} ({html.escape(e.label)}): {html.escape(w)}" for w in e.warnings]
    failed = [
        f"<tr><td>{html.escape(r.run_id)}</td><td>{html.escape(r.status)}</td>"
        f"<td>{html.escape(r.failure_kind or '')}</td><td>{html.escape(r.failure_message or '')}</td></tr>"
        for r in summary.runs
        if r.status != "completed"
    ]
    skipped = [
        f"<li>grid point {s.index + 1}{html.escape(f' ({s.point})' if s.point else '')}: {html.escape(s.reason)}</li>"
        for s in summary.manifest.skipped
    ]
    body = "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>" if items else "<p>No warnings.</p>"
    if failed:
        body += (
            "<h3>Runs that did not complete</h3><table><tr><th>run</th><th>status</th><th>kind</th>"
            f"<th>reason</th></tr>{''.join(failed)}</table>"
        )
    if skipped:
        body += f"<h3>Grid points skipped before running</h3><ul>{''.join(skipped)}</ul>"
    return "Validity warnings", body


def _experiments_table(summary: StudySummary) -> tuple[str, str]:
    columns = [column_for(c) for c in TABLE_METRICS]
    head = "".join(f"<th>{html.escape(k)}</th>" for k in summary.swept) or "<th>experiment</th>"
    head += "<th>runs ok</th>" + "".join(f"<th>{html.escape(header)}</th>" for _, header, _ in columns)
    rows = []
    for e in summary.experiments:
        cells = "".join(f"<td>{html.escape(str(e.params.get(k)))}</td>" for k in summary.swept)
        cells = cells or f"<td>{html.escape(e.label)}</td>"
        cells += f"<td>{e.completed}/{e.runs}</td>" + "".join(
            f"<td>{format_stat(e.stats[name], scale)}</td>" for name, _, scale in columns
        )
        rows.append(f"<tr><td>{e.index}</td>{cells}</tr>")
    body = (
        f"<table><tr><th>#</th>{head}</tr>{''.join(rows)}</table>"
        "<p>mean ± half-width of the 95% confidence interval; every metric is in summary.csv.</p>"
    )
    return "Experiments", body


def _engine_text(engine: str, env: AgentEnvironment) -> str:
    """``vllm 0.33.0``; for pytorch the engine is Transformers, whose version has its own row."""
    version = env.engine_version
    if engine == "pytorch" and version == env.transformers_version:
        return "pytorch (Transformers generate)"
    return f"{engine} {version}" if version else engine


def _environment(summary: StudySummary) -> tuple[str, str]:
    study = StudyDir(summary.study_dir)
    host = study.host()
    first = next((r for r in summary.runs if r.status == "completed"), None)
    result = study.run(first.run_id).read_result()[0] if first is not None else None
    env = result.environment if result is not None else None
    facts: list[tuple[str, Any]] = []
    if host is not None:
        docker = host.get("docker") or {}
        facts += [
            ("host", host.get("hostname")),
            ("OS", host.get("os")),
            ("CPU", host.get("cpu_model")),
            ("host GPUs", ", ".join(f"{g.get('index')}: {g.get('name')}" for g in host.get("gpus", [])) or "none"),
            ("Docker", docker.get("version") if isinstance(docker, dict) else None),
            (
                "images",
                ", ".join(f"{k} ({(v or {}).get('id', '?')[:19]})" for k, v in (host.get("images") or {}).items()),
            ),
        ]
    gpus = env.gpus if env is not None else []
    facts += [
        ("engine", _engine_text(result.engine, env) if result is not None and env is not None else None),
        ("torch", env.torch_version if env is not None else None),
        ("transformers", env.transformers_version if env is not None else None),
        ("device", env.device if env is not None else None),
        ("GPUs in the container", ", ".join(g.name for g in gpus) or "none"),
        ("GPUs simulated", "yes: not a measurement" if env is not None and env.gpus_simulated else None),
        ("driver", next((g.driver_version for g in gpus), None)),
        ("CUDA runtime", env.cuda_runtime if env is not None else None),
    ]
    f = summary.factors
    facts += [
        ("datacenter PUE", f"{f.datacenter_pue} ({f.sources.get('datacenter_pue', '?')})"),
        (
            "carbon intensity",
            "not set: no CO2e"
            if f.carbon_intensity_gco2_kwh is None
            else f"{f.carbon_intensity_gco2_kwh} gCO2/kWh ({f.sources.get('carbon_intensity_gco2_kwh', '?')})",
        ),
    ]
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts if v is not None
    )
    return "Environment", f"<table class='facts'>{rows}</table>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
color:#222;padding:0 1rem}h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;
margin-top:2.2rem}table{border-collapse:collapse;font-size:.9rem}td,th{border:1px solid #ddd;
padding:.25rem .5rem;text-align:left}th{background:#f5f5f5}.warn{color:#a15c00}.meta{color:#666}
.simulated{background:#b00020;color:#fff;font-weight:bold;padding:.5rem .8rem}
"""


# plotly.js's basic bundle (scatter, bar, pie: all the report draws), 1.2 MB instead of the full
# 4.6 MB bundle plotly.py inlines; the same plotly.js version as plotly.py's (a test checks).
PLOTLY_BASIC = Path(__file__).parent / "assets" / "plotly-basic.min.js"


def plotly_js() -> str:
    return PLOTLY_BASIC.read_text(encoding="utf-8")


def render(summary: StudySummary) -> str:
    """The whole report as one HTML document with plotly.js inlined."""
    m = summary.manifest
    completed = sum(r.status == "completed" for r in summary.runs)
    sections = [
        _tradeoff(summary),
        _effects(summary),
        _traces(summary),
        _warnings(summary),
        _experiments_table(summary),
        _environment(summary),
    ]
    banner = f'<p class="simulated">{html.escape(SIMULATED_BANNER)}</p>' if summary.gpus_simulated else ""
    body = "".join(f"<section><h2>{html.escape(title)}</h2>{content}</section>" for title, content in sections)
    title = f"llem report: {m.study_name}" + (" (SIMULATED GPUs)" if summary.gpus_simulated else "")
    meta = (
        f"study {html.escape(m.study_id)} · status {html.escape(m.status)} · {completed}/{len(summary.runs)} runs "
        f"completed · {len(summary.experiments)} experiments × {m.n_cycles} cycles · order {m.experiment_order} · "
        f"design hash {html.escape(m.study_design_hash)} · llem {__version__}"
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style>'
        f'<script type="text/javascript">{plotly_js()}</script></head><body>'
        f'<h1>{html.escape(title)}</h1>{banner}<p class="meta">{meta}</p>{body}</body></html>'
    )


def write_report(summary: StudySummary, out: Path | None = None) -> Path:
    """Write the report (atomically) to ``out``, default ``<study>/report.html``."""
    from llem_agent.contract import write_atomic

    path = out or StudyDir(summary.study_dir).report_file
    write_atomic(path, render(summary))
    return path
