"""``make gpu-check``'s analysis and its document: every validation target checked against what
a study directory and the harness rows hold (``analyse``, a pure function of them, unit-tested on
synthetic studies), and the document that shows it (``render``)."""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .gpucheck_plan import Sizing
from .studydir import StudyDir

COUNTER_TRACE_TARGET = 0.02
HARNESS_TARGET = 0.99
MIN_WINDOW_S = 10.0


# --- the analysis (pure) ------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One validation target: what was asked, what was seen, and whether it holds."""

    name: str
    target: str
    seen: str
    ok: bool


@dataclass
class Validation:
    targets: list[Target] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    by_batch: dict[int, float] = field(default_factory=dict)
    harness_ratio: float | None = None
    harness_rows: list[dict[str, float]] = field(default_factory=list)
    driver: str | None = None
    parameters: int | None = None

    @property
    def ok(self) -> bool:
        return bool(self.targets) and all(t.ok for t in self.targets)


def _telemetry_rows(path: Path) -> int | None:
    if not path.exists():
        return None
    import pyarrow.parquet as pq

    return int(pq.read_metadata(path).num_rows)


def analyse(study_dir: Path | None, harness_rows: list[dict[str, float]] | None = None) -> Validation:
    """Every target of the validation, from a study directory (finished or not; None: no study)
    and the harness pairs so far."""
    v = Validation(harness_rows=list(harness_rows or []))
    if study_dir is None or not StudyDir(study_dir).is_study():
        v.targets.append(Target("runs completed", "every run of the study", "study not run", False))
    else:
        _analyse_study(v, study_dir)
    if harness_rows:
        ratios = [row["agent_tokens_per_s"] / row["bare_tokens_per_s"] for row in harness_rows]
        v.harness_ratio = statistics.median(ratios)
        v.targets.append(
            Target(
                "harness ratio (agent / bare generate loop)",
                f">= {HARNESS_TARGET}",
                f"median {v.harness_ratio:.3f} of {len(ratios)} pairs",
                v.harness_ratio >= HARNESS_TARGET,
            )
        )
    return v


def _analyse_study(v: Validation, study_dir: Path) -> None:
    study = StudyDir(study_dir)
    manifest = study.manifest()
    results = list(study.completed_results(manifest))  # each usable one, in manifest order
    total = len(manifest.runs)
    v.targets.append(Target("runs completed", f"all {total}", f"{len(results)}", len(results) == total and total > 0))
    if results:
        first = results[0][1]
        v.driver = first.environment.gpus[0].driver_version if first.environment.gpus else None
        v.parameters = first.model_parameters
    per_batch: dict[int, list[float]] = {}
    worst_gap = 0.0
    over_limit, ttft_bad, short, flagged, sidecars = [], [], [], [], []
    for run_id, r in results:
        e, window = r.energy, r.timings.measure_s
        batch = int(r.effective.get("batch_size") or 0)
        gaps = [
            abs(d.energy_j - d.trace_energy_j) / d.energy_j
            for d in e.devices
            if d.energy_j and d.trace_energy_j is not None
        ]
        gap = max(gaps) if gaps else None
        worst_gap = max(worst_gap, gap if gap is not None else float("inf"))
        limits = [g.power_limit_w for g in r.environment.gpus]
        limit_j = sum(x for x in limits if x) * window if limits and all(limits) else None
        if e.energy_j is None or limit_j is None or e.energy_j > limit_j:
            over_limit.append(run_id)
        if any(q.ttft_s is None or q.ttft_s > q.e2e_latency_s + 1e-9 for q in r.requests):
            ttft_bad.append(run_id)
        if window < MIN_WINDOW_S:
            short.append(run_id)
        if e.flags:
            flagged.append(f"{run_id}: {', '.join(f.code for f in e.flags)}")
        rows = _telemetry_rows(study.run(run_id).telemetry_file)
        if rows is None or rows < int(window) * max(1, len(r.environment.gpus)):
            sidecars.append(run_id)
        if e.j_per_output_token is not None:
            per_batch.setdefault(batch, []).append(e.j_per_output_token)
        baseline = e.baseline
        v.runs.append(
            {
                "run": run_id,
                "batch": batch,
                "window_s": window,
                "energy_j": e.energy_j,
                "trace_j": e.trace_energy_j,
                "gap": gap,
                "limit_j": limit_j,
                "j_per_token": e.j_per_output_token,
                "tok_s": r.throughput.output_tokens_per_s,
                "mean_w": e.mean_power_w,
                "idle_before_w": baseline.total_power_w if baseline else None,
                "baseline_source": baseline.source if baseline else None,
                "idle_after_w": baseline.loaded_total_power_w if baseline else None,
                "adjusted_with": baseline.adjusted_with if baseline else None,
                "capped": e.power_capped_fraction,
                "ttft_p50_s": r.latency.ttft_s.p50,
                "e2e_p50_s": r.latency.e2e_s.p50,
                "flags": [f.code for f in e.flags],
                "telemetry_rows": rows,
            }
        )
    v.by_batch = {b: statistics.fmean(x) for b, x in sorted(per_batch.items())}
    found = "none" if worst_gap == float("inf") or not results else f"worst {worst_gap:.2%}"
    ok_gap = bool(results) and worst_gap <= COUNTER_TRACE_TARGET
    v.targets.append(
        Target("counter vs integrated trace", f"within {COUNTER_TRACE_TARGET:.0%} on every run", found, ok_gap)
    )
    v.targets.append(Target("energy <= power limit x window", "every run", _failures(over_limit), not over_limit))
    falling = list(v.by_batch.values())
    decreasing = len(falling) >= 2 and all(b < a for a, b in itertools.pairwise(falling))
    shown = ", ".join(f"b{b}: {j:.4f}" for b, j in v.by_batch.items()) or "none"
    v.targets.append(Target("J/output token falls with batch size", "strictly", shown, decreasing))
    v.targets.append(Target("TTFT <= end-to-end", "every request of every run", _failures(ttft_bad), not ttft_bad))
    v.targets.append(Target("measured window", f">= {MIN_WINDOW_S:.0f} s", _failures(short), not short))
    v.targets.append(Target("validity flags", "none on a healthy run", "; ".join(flagged) or "none", not flagged))
    v.targets.append(Target("telemetry sidecar", ">= 1 row per second per GPU", _failures(sidecars), not sidecars))


def _failures(run_ids: list[str]) -> str:
    return "all hold" if not run_ids else f"fails: {', '.join(run_ids)}"


def _fmt(value: object, spec: str = ".1f") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


# --- the document -------------------------------------------------------------------------


@dataclass
class StageRecord:
    """One stage as the document shows it."""

    name: str
    status: str = "not run"  # not run | running | done | failed: ... | skipped: ... | interrupted
    estimate_s: float | None = None
    took_s: float | None = None
    note: str = ""

    @property
    def finished(self) -> bool:
        return self.status == "done" or self.status.startswith("skipped")


def render(v: Validation, facts: dict[str, Any], stages: list[StageRecord], sizing: Sizing | None = None) -> str:
    """The validation document: stages, plan, targets, runs, harness pairs."""
    unfinished = [s for s in stages if not s.finished]
    if not unfinished:
        status = f"**Status: complete** in {facts['wall_s']:.0f} s."
    else:
        running = "running when this was written (cut short here if nothing follows)"
        said = "; ".join(f"{s.name} {running if s.status == 'running' else s.status}" for s in unfinished)
        status = f"**Status: incomplete**: {said} (after {facts['wall_s']:.0f} s)."
    met = sum(t.ok for t in v.targets)
    result = (
        f"**Result: {'all targets met' if v.ok else 'NOT all targets met'}.**"
        if not unfinished
        else f"**Result so far: {met} of {len(v.targets)} targets met.**"
    )
    lines = [
        "# GPU validation",
        "",
        f"Written by `{facts['command']}` on {facts['date']}, llem {__version__} ({facts.get('llem_from') or '?'}).",
        f"GPU: {facts['gpus']}; driver {facts.get('driver') or '?'}, CUDA {facts.get('cuda') or '?'}; "
        f"torch {facts.get('torch') or '?'}; host {facts['host']}.",
        f"Model: random-initialised Llama-style, {facts.get('parameters') or '?'} parameters, bfloat16; "
        f"{facts['tokens_in']} tokens in, {facts['tokens_out']} out (min_new_tokens = max); batch sizes "
        f"{facts['batch_sizes']}; {facts['cycles']} cycle(s); local runner; idle baseline {facts['baseline']}.",
        *([f"**Warning:** {facts['warning']}"] if facts.get("warning") else []),
        "",
        status,
        "",
        result,
        "",
        "## Stages",
        "",
        "| stage | status | estimate s | took s | note |",
        "|---|---|---|---|---|",
        *(f"| {s.name} | {s.status} | {_fmt(s.estimate_s, '.0f')} | {_fmt(s.took_s, '.0f')} | {s.note} |"
          for s in stages),
    ]  # fmt: skip
    if sizing is not None:
        source = "measured by the probe" if sizing.measured else "assumed"
        lines += ["", f"## Plan (decode steps {source})", "", "| batch | batches | prompts | tokens out | batch s | "
                  "planned window s |", "|---|---|---|---|---|---|"]  # fmt: skip
        lines += [
            f"| {w.batch} | {w.n_batches} | {w.n_prompts} | {sizing.tokens_out} | {w.batch_s:.2f} | {w.window_s:.1f} |"
            for w in sizing.windows
        ]
    lines += [
        "",
        "## Targets",
        "",
        "| target | asked | seen | |",
        "|---|---|---|---|",
        *(f"| {t.name} | {t.target} | {t.seen} | {'ok' if t.ok else '**FAIL**'} |" for t in v.targets),
        "",
        "## Runs",
        "",
        "| run | batch | window s | counter J | trace J | gap | limit x window J | J/out tok | out tok/s | "
        "mean W | idle before load W | baseline | idle after load W | adjusted with | power-capped | TTFT p50 s | "
        "e2e p50 s | flags | telemetry rows |",
        "|" + "---|" * 19,
    ]
    for r in v.runs:
        lines.append(
            f"| {r['run']} | {r['batch']} | {_fmt(r['window_s'])} | {_fmt(r['energy_j'])} | {_fmt(r['trace_j'])} | "
            f"{_fmt(r['gap'], '.2%')} | {_fmt(r['limit_j'], '.0f')} | {_fmt(r['j_per_token'], '.4f')} | "
            f"{_fmt(r['tok_s'], '.0f')} | {_fmt(r['mean_w'])} | {_fmt(r['idle_before_w'])} | "
            f"{_fmt(r['baseline_source'])} | {_fmt(r['idle_after_w'])} | {_fmt(r['adjusted_with'])} | "
            f"{_fmt(r['capped'], '.0%')} | {_fmt(r['ttft_p50_s'], '.3f')} | {_fmt(r['e2e_p50_s'], '.3f')} | "
            f"{', '.join(r['flags']) or '–'} | {_fmt(r['telemetry_rows'])} |"
        )
    if v.harness_rows:
        lines += [
            "",
            "## Harness pairs",
            "",
            "| pair | agent out tok/s | bare out tok/s | ratio |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {i} | {row['agent_tokens_per_s']:.1f} | {row['bare_tokens_per_s']:.1f} | "
            f"{row['agent_tokens_per_s'] / row['bare_tokens_per_s']:.3f} |"
            for i, row in enumerate(v.harness_rows, 1)
        ]
    return "\n".join([*lines, ""])
