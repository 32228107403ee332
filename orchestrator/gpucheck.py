"""``make gpu-check``: prove llem's numbers on an NVIDIA GPU in one command.

On a host with a GPU, torch (CUDA), transformers and nvidia-ml-py, and neither Docker nor a
network: build a random-initialised Llama-style model of about 1.1B parameters (tokenizer
trained locally), run a validation study through the local runner (bfloat16; batch 1, 8 and
32; 3 cycles), measure the harness against a bare generate loop on the same model, and write
``docs/gpu-validation.md``: each target with what was measured. With Docker and the NVIDIA
runtime it also runs the same study through the docker runner. One real NVML trace is kept as
a replay fixture for the unit tests. Without a GPU it exits 3 with one line.

The analysis (``analyse``) is a pure function of the study directory, unit-tested on
synthetic studies; nothing here imports torch (the agent runs in child processes).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llem_agent.contract import RAW_TRACE_ENV, RAW_TRACE_FILE, ExperimentResult
from orchestrator import __version__
from orchestrator.errors import EXIT_ENVIRONMENT, EXIT_OK, EXIT_RUNS_FAILED

REPO = Path(__file__).resolve().parents[1]
COUNTER_TRACE_TARGET = 0.02
HARNESS_TARGET = 0.99
MIN_WINDOW_S = 10.0
BATCH_SIZES = (1, 8, 32)

STUDY = """\
# Written by make gpu-check (orchestrator/gpucheck.py).
name: gpu-check
model: {model}
engine: pytorch
dtype: bfloat16
random_seed: 42
max_input_tokens: {tokens_in}
max_output_tokens: {tokens_out}
decoder: {{do_sample: false, min_new_tokens: {tokens_out}}}   # a fixed amount of work per request
dataset: {{source: builtin, n_prompts: {n_prompts}}}
warmup: {{thermal_floor_seconds: 30}}
baseline: {{strategy: fresh, duration_seconds: 10}}
gpu_telemetry: true
sweep:
  batch:
{groups}
study_execution: {{n_cycles: {cycles}, experiment_order: interleave, config_gap_seconds: 0}}
"""


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

    @property
    def ok(self) -> bool:
        return bool(self.targets) and all(t.ok for t in self.targets)


def _load_results(study_dir: Path) -> list[tuple[str, ExperimentResult]]:
    manifest = json.loads((study_dir / "manifest.json").read_text(encoding="utf-8"))
    out = []
    for entry in manifest["runs"]:
        path = study_dir / "runs" / entry["run_id"] / "result.json"
        if entry["status"] == "completed" and path.exists():
            out.append((entry["run_id"], ExperimentResult.model_validate_json(path.read_text(encoding="utf-8"))))
    return out


def _telemetry_rows(path: Path) -> int | None:
    if not path.exists():
        return None
    import pyarrow.parquet as pq

    return int(pq.read_metadata(path).num_rows)


def analyse(study_dir: Path, harness_rows: list[dict[str, float]] | None = None) -> Validation:
    """Every target of the validation, from a finished study directory (and the harness pairs)."""
    v = Validation()
    manifest = json.loads((study_dir / "manifest.json").read_text(encoding="utf-8"))
    results = _load_results(study_dir)
    total = len(manifest["runs"])
    v.targets.append(Target("runs completed", f"all {total}", f"{len(results)}", len(results) == total and total > 0))
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
        rows = _telemetry_rows(study_dir / "runs" / run_id / "timeseries.parquet")
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
    found = "none" if worst_gap == float("inf") else f"worst {worst_gap:.2%}"
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


def _failures(run_ids: list[str]) -> str:
    return "all hold" if not run_ids else f"fails: {', '.join(run_ids)}"


def _fmt(value: object, spec: str = ".1f") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def render(v: Validation, facts: dict[str, Any], docker_note: str) -> str:
    """docs/gpu-validation.md."""
    lines = [
        "# GPU validation",
        "",
        f"Written by `make gpu-check` ({facts['command']}) on {facts['date']}, llem {__version__}.",
        f"GPU: {facts['gpus']}; driver {facts.get('driver') or '?'}, CUDA {facts.get('cuda') or '?'}; "
        f"torch {facts.get('torch') or '?'}; host {facts['host']}. Wall time {facts['wall_s']:.0f} s.",
        f"Model: random-initialised Llama-style, {facts.get('parameters') or '?'} parameters, bfloat16; "
        f"{facts['tokens_in']} tokens in, {facts['tokens_out']} out (min_new_tokens = max); batch sizes "
        f"{', '.join(map(str, BATCH_SIZES))}; {facts['cycles']} cycles; local runner.",
        "",
        f"**Result: {'all targets met' if v.ok else 'NOT all targets met'}.**",
        "",
        "| target | asked | seen | |",
        "|---|---|---|---|",
        *(f"| {t.name} | {t.target} | {t.seen} | {'ok' if t.ok else '**FAIL**'} |" for t in v.targets),
        "",
        "## Runs",
        "",
        "| run | batch | window s | counter J | trace J | gap | limit x window J | J/out tok | out tok/s | "
        "mean W | idle before load W | idle after load W | adjusted with | power-capped | TTFT p50 s | "
        "e2e p50 s | flags | telemetry rows |",
        "|" + "---|" * 18,
    ]
    for r in v.runs:
        lines.append(
            f"| {r['run']} | {r['batch']} | {_fmt(r['window_s'])} | {_fmt(r['energy_j'])} | {_fmt(r['trace_j'])} | "
            f"{_fmt(r['gap'], '.2%')} | {_fmt(r['limit_j'], '.0f')} | {_fmt(r['j_per_token'], '.4f')} | "
            f"{_fmt(r['tok_s'], '.0f')} | {_fmt(r['mean_w'])} | {_fmt(r['idle_before_w'])} | "
            f"{_fmt(r['idle_after_w'])} | {_fmt(r['adjusted_with'])} | {_fmt(r['capped'], '.0%')} | "
            f"{_fmt(r['ttft_p50_s'], '.3f')} | {_fmt(r['e2e_p50_s'], '.3f')} | {', '.join(r['flags']) or '–'} | "
            f"{_fmt(r['telemetry_rows'])} |"
        )
    lines += ["", "## Docker runner", "", docker_note, ""]
    return "\n".join(lines)


# --- the run -----------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"gpu-check: {message}", flush=True)


def _child(python: str, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)


def write_study(
    work: Path, model: Path, *, cycles: int, batches_per_window: int, tokens_in: int, tokens_out: int
) -> Path:
    """The validation study: each batch size with enough prompts for ``batches_per_window`` batches."""
    groups = "\n".join(
        f"    - {{pytorch.batch_size: {b}, dataset.n_prompts: {min(200, b * batches_per_window)}, "
        f"warmup.n_warmup: {max(2, b)}}}"
        for b in BATCH_SIZES
    )
    path = work / "gpu-check.yaml"
    path.write_text(
        STUDY.format(
            model=model, tokens_in=tokens_in, tokens_out=tokens_out, n_prompts=32, groups=groups, cycles=cycles
        ),
        encoding="utf-8",
    )
    return path


def _newest(results: Path) -> Path:
    return max((p for p in results.iterdir() if (p / "manifest.json").exists()), key=lambda p: p.stat().st_mtime)


def _keep_fixture(study_dir: Path, fixtures: Path, gpu_name: str) -> Path | None:
    """One real trace (a batch-8 run's) becomes tests/fixtures/nvml/<gpu>.json."""
    traces = sorted(study_dir.glob(f"runs/*/{RAW_TRACE_FILE}"))
    if not traces:
        return None
    chosen = next((t for t in traces if "e002" in t.parent.name), traces[0])
    data = json.loads(chosen.read_text(encoding="utf-8"))
    data["source"] = f"make gpu-check, {gpu_name}, run {chosen.parent.name}"
    fixtures.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in gpu_name.lower()).strip("-")
    out = fixtures / f"{slug}.json"
    out.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return out


def _docker_run(study: Path, work: Path) -> str:
    """The same study through the docker runner, where Docker and the NVIDIA runtime are here."""
    from orchestrator.doctor import nvidia_support
    from orchestrator.launcher import DockerLauncher

    try:
        info = DockerLauncher().client.info()
    except Exception as exc:  # any failure means: no usable Docker here
        return f"Not run: no Docker engine here ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})."
    if nvidia_support(info) is None:
        return "Not run: Docker is here but has no NVIDIA runtime or CDI spec."
    from orchestrator.cli import main as llem

    code = llem(["run", str(study), "--runner", "docker", "--results-dir", str(work / "results-docker")])
    if code not in (EXIT_OK, EXIT_RUNS_FAILED):
        return f"Run through the docker runner: llem exited {code} (see above)."
    v = analyse(_newest(work / "results-docker"))
    return "Run through the docker runner: " + "; ".join(
        f"{t.name}: {t.seen} ({'ok' if t.ok else 'FAIL'})" for t in v.targets
    )


def _harness(python: str, model: Path, pairs: int, tokens: int) -> list[dict[str, float]] | None:
    """Agent vs bare generate loop on the same loaded model, ABBA pairs (tests/bench/harness.py)."""
    _say("harness overhead: agent vs bare generate loop on the same model (ABBA pairs)")
    harness = subprocess.run(
        [python, str(REPO / "tests" / "bench" / "harness.py"), str(model), str(pairs), "--batch", "8",
         "--tokens", str(tokens), "--prompts", "64", "--dtype", "bfloat16"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if harness.returncode != 0:
        _say(f"harness failed: {(harness.stderr.strip().splitlines() or ['?'])[-1]}")
        return None
    rows: list[dict[str, float]] = json.loads(harness.stdout.strip().splitlines()[-1])["rows"]
    return rows


def _facts(study_dir: Path, gpus: list[Any], torch_version: str, cuda: str, args: argparse.Namespace) -> dict[str, Any]:
    first = next((r for _, r in _load_results(study_dir)), None)
    return {
        "command": "make gpu-check",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "gpus": ", ".join(f"{g.index}: {g.name}" for g in gpus),
        "driver": first.environment.gpus[0].driver_version if first and first.environment.gpus else None,
        "cuda": cuda,
        "torch": torch_version,
        "host": f"{platform.node()} ({platform.platform()})",
        "parameters": f"{first.model_parameters / 1e9:.2f}B" if first and first.model_parameters else None,
        "tokens_in": args.tokens_in,
        "tokens_out": args.tokens_out,
        "cycles": args.cycles,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.gpucheck", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "gpu-validation.md")
    parser.add_argument("--work", type=Path, default=Path("gpu-check-work"), help="model, study and results")
    parser.add_argument("--fixtures", type=Path, default=REPO / "tests" / "fixtures" / "nvml")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--batches", type=int, default=4, help="batches per measured window")
    parser.add_argument("--tokens-in", type=int, default=128)
    parser.add_argument("--tokens-out", type=int, default=192)
    parser.add_argument("--harness-pairs", type=int, default=5)
    args = parser.parse_args(argv)
    started = time.monotonic()

    from orchestrator.devices import nvml_gpus

    gpus, why = nvml_gpus()
    if not gpus:
        print(f"gpu-check: no NVIDIA GPU here ({why}); run it on a GPU machine", file=sys.stderr)
        return EXIT_ENVIRONMENT
    if any(g.mig for g in gpus):
        print("gpu-check: a GPU is in MIG mode; llem measures whole GPUs (disable MIG first)", file=sys.stderr)
        return EXIT_ENVIRONMENT
    python = sys.executable
    probe = _child(python, "import torch, transformers; assert torch.cuda.is_available(), 'CUDA not available'; "
                           "print(torch.__version__, torch.version.cuda)")  # fmt: skip
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        print(f"gpu-check: torch with CUDA and transformers must import with {python} ({last})", file=sys.stderr)
        return EXIT_ENVIRONMENT
    torch_version, cuda = probe.stdout.split()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = work / "llama-1b"
    if not (model / "config.json").exists():
        _say(f"building a random-initialised ~1.1B Llama in {model}")
        subprocess.run(
            [python, "-m", "llem_agent.tiny_model", str(model), "--arch", "llama", "--size", "1b"], check=True
        )
    study = write_study(
        work, model, cycles=args.cycles, batches_per_window=args.batches, tokens_in=args.tokens_in,
        tokens_out=args.tokens_out,
    )  # fmt: skip
    _say(f"validation study {study} through the local runner")
    from orchestrator.cli import main as llem

    os.environ[RAW_TRACE_ENV] = "1"
    code = llem(["run", str(study), "--runner", "local", "--results-dir", str(work / "results")])
    if code not in (EXIT_OK, EXIT_RUNS_FAILED):
        print(f"gpu-check: the validation study did not run (llem exited {code})", file=sys.stderr)
        return code
    study_dir = _newest(work / "results")
    rows = _harness(python, model, args.harness_pairs, args.tokens_in)
    v = analyse(study_dir, rows)
    docker_note = _docker_run(study, work)
    facts = _facts(study_dir, gpus, torch_version, cuda, args) | {"wall_s": time.monotonic() - started}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(v, facts, docker_note), encoding="utf-8")
    fixture = _keep_fixture(study_dir, args.fixtures, gpus[0].name)
    for t in v.targets:
        _say(f"{'ok  ' if t.ok else 'FAIL'} {t.name}: {t.seen} (target: {t.target})")
    _say(f"written {args.out}" + (f" and the replay fixture {fixture}" if fixture else ""))
    return EXIT_OK if v.ok else EXIT_RUNS_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
