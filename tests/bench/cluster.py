"""``make bench``, the cluster part: how fast runs are handed out through the claim protocol,
and what a Slurm job array adds per run over the in-process executor."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

from llem.claims import ClaimBoard
from llem.manifest import CLAIMABLE, Manifest, ManifestStore, RunEntry

SCHEDULED_RUNS = 1_000


def _pending_study(study_dir: Path, n: int) -> list[str]:
    runs = [f"e{i:04d}-c1" for i in range(1, n + 1)]
    entries = [
        RunEntry(run_id=r, experiment_index=i, cycle=1, config_hash="0" * 16, image="x") for i, r in enumerate(runs)
    ]
    manifest = Manifest(
        study_name="bench", study_id=study_dir.name, study_design_hash="0" * 16, llem_version="bench", n_cycles=1,
        experiment_order="sequential", shuffle_seed=None, runs=entries,
    )  # fmt: skip
    study_dir.mkdir(parents=True)
    ManifestStore(study_dir, manifest).publish()
    return runs


def _worker(study_dir: str, runs: list[str], name: str) -> None:
    """What a worker does per run, minus the run: claim, re-read the manifest, record, release."""
    board = ClaimBoard(Path(study_dir), worker=name)
    store = ManifestStore(Path(study_dir), ManifestStore.load(Path(study_dir)))
    for run_id in runs:
        claim = board.claim(run_id)
        if claim is None:
            continue
        if store.refresh().run(run_id).status in CLAIMABLE:
            store.update_run(run_id, status="running")
            store.update_run(run_id, status="completed")
        claim.release()


def claim_rates(tmp: Path, repetitions: int, workers: int = 4) -> dict[str, list[float]]:
    """Per second: bare claims (exclusive create + release, one process), and runs handed out end
    to end (claim, manifest re-read, two manifest updates, release) by ``workers`` racing processes."""
    ctx = multiprocessing.get_context("fork")
    rates: dict[str, list[float]] = {"claims": [], "runs": []}
    for rep in range(repetitions):
        bare = tmp / f"bare{rep}"
        runs = _pending_study(bare, SCHEDULED_RUNS)
        board = ClaimBoard(bare, worker="bench")
        start = time.perf_counter()
        for run_id in runs:
            claim = board.claim(run_id)
            assert claim is not None
            claim.release()
        rates["claims"].append(SCHEDULED_RUNS / (time.perf_counter() - start))
        full = tmp / f"full{rep}"
        runs = _pending_study(full, SCHEDULED_RUNS)
        procs = [ctx.Process(target=_worker, args=(str(full), runs, f"w{i}")) for i in range(workers)]
        start = time.perf_counter()
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        rates["runs"].append(SCHEDULED_RUNS / (time.perf_counter() - start))
        done = ManifestStore.load(full).runs
        assert all(e.status == "completed" for e in done), "a run was lost"
    return rates


def slurm_overhead(tmp: Path, study_text: str, repetitions: int) -> dict[str, list[float]]:
    """Wall time of one study (``study_text``) in-process and as a one-task Slurm array (--wait), alternating."""
    llem = str(Path(sys.executable).parent / "llem")
    study = tmp / "slurm.yaml"
    study.write_text(study_text)
    walls: dict[str, list[float]] = {"in-process": [], "slurm": []}
    for rep in range(repetitions):
        for name, extra in (("in-process", []), ("slurm", ["--executor", "slurm", "--slurm-tasks", "1", "--wait"])):
            start = time.perf_counter()
            subprocess.run([llem, "run", str(study), "--results-dir", str(tmp / f"r-{name}-{rep}"), *extra],
                           check=True, capture_output=True)  # fmt: skip
            walls[name].append(time.perf_counter() - start)
    return walls
