"""A synthetic study directory, laid out exactly as `llem run` leaves one, for testing and
benchmarking what reads study directories (`llem results`, `llem report`) at any size.

The study itself is parsed by the real grammar and planned by the real planner; only the
measurements are made up, from a simple model with noise: throughput grows with batch size,
power with it more slowly, so energy per token falls. Results are real `ExperimentResult`
objects (schema-valid), telemetry sidecars are written by the agent's own writer.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from llem.manifest import Manifest, RunEntry, RunFailure, SkippedEntry
from llem.plan import make_plan
from llem.results import HOST_FILE, write_design
from llem.study import study_from_data
from llem_agent.contract import (
    EXPERIMENT_FILE,
    RESULT_FILE,
    TELEMETRY_FILE,
    DeviceEnergy,
    EnergyReport,
    ExperimentResult,
    Latency,
    RequestRecord,
    Throughput,
    ValidityFlag,
    write_atomic,
)
from llem_agent.contract.result import Distribution
from llem_agent.telemetry import write_parquet
from tests.factories import make_result


def _dist(mean: float, n: int) -> Distribution:
    return Distribution(n=n, mean=mean, p50=mean * 0.95, p90=mean * 1.3, p99=mean * 1.8, min=mean * 0.5, max=mean * 2)


def make_study_dir(
    root: Path,
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8),
    dtypes: tuple[str, ...] = ("bfloat16", "float16"),
    n_cycles: int = 3,
    *,
    energy: bool = True,
    telemetry: bool = True,
    failed_runs: int = 1,
    seed: int = 0,
    carbon_intensity: float | None = 300.0,
    requests_per_run: int = 0,
) -> Path:
    """Write a study directory of len(batch_sizes) x len(dtypes) experiments x n_cycles runs.

    ``requests_per_run`` > 0 gives each result that many per-request records of 64 token times,
    so result files are as large as real ones (the benchmark reads 1,000 of them)."""
    rng = random.Random(seed)
    data: dict[str, Any] = {
        "name": "synthetic",
        "model": "example/tiny",
        "engine": "pytorch",
        "sweep": {"pytorch.batch_size": list(batch_sizes), "dtype": list(dtypes)},
        "study_execution": {"n_cycles": n_cycles, "experiment_order": "interleave"},
    }
    study_dir = root / "synthetic_20261122T000000Z"
    (study_dir / "runs").mkdir(parents=True)
    write_atomic(study_dir / "study.yaml", json.dumps(data))
    study = study_from_data(data, study_dir / "study.yaml")
    plan = make_plan(study)
    design = ((e.index, e.config_hash, e.config.model_dump(mode="json")) for e in study.experiments)
    write_design(study_dir, study.design_hash, design)
    host = {
        "hostname": "synthetic",
        "os": "Linux",
        "cpu_model": "Synthetic CPU",
        "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-0"}],
        "docker": {"version": "27.0"},
        "images": {"llem/pytorch:0.1.0": {"id": "sha256:" + "0" * 64}},
        "measurement": {
            "datacenter_pue": 1.2,
            "carbon_intensity_gco2_kwh": carbon_intensity,
            "datacenter_location": "DE",
            "sources": {"datacenter_pue": "user config", "carbon_intensity_gco2_kwh": "env LLEM_CARBON_INTENSITY"},
        },
    }
    write_atomic(study_dir / HOST_FILE, json.dumps(host))
    entries = []
    failing = set(rng.sample(range(len(plan.runs)), min(failed_runs, len(plan.runs))))
    for position, run in enumerate(plan.runs):
        config = run.experiment.config
        entry = RunEntry(
            run_id=run.run_id,
            experiment_index=run.experiment.index,
            cycle=run.cycle,
            config_hash=run.experiment.config_hash,
            image="llem/pytorch:0.1.0",
            devices=["gpu0"],
            attempts=1,
            started_at="2026-11-22T00:00:00Z",
            finished_at="2026-11-22T00:01:00Z",
            wall_s=60.0,
        )
        run_dir = study_dir / "runs" / run.run_id
        run_dir.mkdir()
        write_atomic(run_dir / EXPERIMENT_FILE, json.dumps({"config": config.model_dump(mode="json")}))
        if position in failing:
            entry.status = "failed"
            entry.exit_code = 1
            entry.failure = RunFailure(kind="oom", message="measure: CUDA out of memory (synthetic)")
        else:
            entry.status = "completed"
            batch = config.pytorch.batch_size if config.pytorch and config.pytorch.batch_size else 1
            result = _result(run.run_id, run.experiment.config_hash, batch, config.dtype, rng, energy=energy)
            if requests_per_run:
                result = result.model_copy(update={"requests": _requests(requests_per_run, rng)})
            write_atomic(run_dir / RESULT_FILE, result.model_dump_json())
            if telemetry and energy:
                _telemetry(run_dir / TELEMETRY_FILE, result, rng)
        entries.append(entry)
    manifest = Manifest(
        study_name="synthetic",
        study_id=study_dir.name,
        study_design_hash=study.design_hash,
        llem_version="0.1.0",
        status="failed" if failing else "completed",
        n_cycles=n_cycles,
        experiment_order="interleave",
        shuffle_seed=None,
        runs=entries,
        skipped=[SkippedEntry(index=99, reason="synthetic: an invalid grid point")],
    )
    write_atomic(study_dir / "manifest.json", manifest.model_dump_json(indent=2))
    return study_dir


def _result(
    run_id: str, config_hash: str, batch: int, dtype: str | None, rng: random.Random, *, energy: bool
) -> ExperimentResult:
    noise = 1 + rng.gauss(0, 0.03)
    tokens_per_s = 900 * batch**0.8 * (1.1 if dtype == "float16" else 1.0) * noise
    output_tokens, input_tokens = 12_800, 9_000
    window = output_tokens / tokens_per_s
    power = (180 + 40 * math.log2(batch)) * (1 + rng.gauss(0, 0.01))
    energy_j = power * window
    itl = 1 / (tokens_per_s / batch)
    base = make_result(run_id, config_hash, window_s=window)
    report = (
        EnergyReport(
            energy_j=energy_j,
            source="nvml_total_energy",
            devices=[DeviceEnergy(index=0, name="NVIDIA H100 80GB HBM3", energy_j=energy_j, trace_energy_j=energy_j)],
            trace_energy_j=energy_j * 1.004,
            j_per_output_token=energy_j / output_tokens,
            j_per_token=energy_j / (output_tokens + input_tokens),
            j_per_request=energy_j / 400,
            mean_power_w=power,
            peak_power_w=power * 1.15,
            prefill_energy_j=energy_j * 0.2,
            decode_energy_j=energy_j * 0.8,
            adjusted_energy_j=energy_j - 70 * window,
            n_samples=int(window * 10),
            sample_interval_s=0.1,
            flags=[ValidityFlag(code="short_window", message="window 3.1 s < 5 s")] if window < 5 else [],
        )
        if energy
        else EnergyReport(energy_j=None, source=None, unavailable_reason="NVML unavailable (synthetic)")
    )
    return base.model_copy(
        update={
            "engine": "pytorch",
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "n_requests": 400,
            "throughput": Throughput(
                output_tokens_per_s=tokens_per_s,
                total_tokens_per_s=tokens_per_s * (input_tokens + output_tokens) / output_tokens,
                requests_per_s=400 / window,
            ),
            "latency": Latency(
                ttft_s=_dist(0.02 * batch**0.5, 400), inter_token_s=_dist(itl, 12_000), e2e_s=_dist(32 * itl, 400)
            ),
            "energy": report,
        }
    )


def _requests(n: int, rng: random.Random) -> list[RequestRecord]:
    records = []
    for i in range(n):
        times = sorted(rng.uniform(0.01, 2.0) for _ in range(64))
        records.append(
            RequestRecord(index=i, input_tokens=32, output_tokens=64, ttft_s=times[0], e2e_latency_s=times[-1],
                          token_times_s=times)
        )  # fmt: skip
    return records


def _telemetry(path: Path, result: ExperimentResult, rng: random.Random) -> None:
    power = result.energy.mean_power_w or 100.0
    seconds = max(2, int(result.timings.measure_s) + 1)
    rows: list[dict[str, float | int]] = [
        {
            "timestamp_s": float(t),
            "gpu_index": 0,
            "power_w": power * (1 + rng.gauss(0, 0.02)),
            "temperature_c": 45 + 10 * (1 - math.exp(-t / 20)),
            "memory_used_mb": 20_000.0,
            "memory_total_mb": 81_559.0,
            "sm_utilisation_pct": 95.0,
            "throttle_reasons": 0,
        }
        for t in range(seconds)
    ]
    write_parquet(rows, path)
