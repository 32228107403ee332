"""Parallel runs on one host through real containers: the demo study two at a time, each run
pinned to its own core; Ctrl-C stops every worker and loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from llem.errors import EXIT_INTERRUPTED, EXIT_OK
from tests.conftest import REPO
from tests.helpers import llem_executable, run_llem


def runs(study_dir: Path) -> list[dict]:
    return json.loads((study_dir / "manifest.json").read_text())["runs"]


def test_the_demo_study_two_at_a_time_on_disjoint_cores(tmp_path, tiny_model, docker_client):
    if len(os.sched_getaffinity(0)) < 2:
        raise AssertionError("this test needs two cores; CI machines have them")
    results = tmp_path / "results"
    done = run_llem("run", str(REPO / "examples" / "quickstart.yaml"), "--parallel", "2",
                    "--results-dir", str(results), "--lock-dir", str(tmp_path / "locks"))  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr + done.stdout
    (study_dir,) = results.iterdir()
    entries = {r["run_id"]: r for r in runs(study_dir)}
    assert [r["status"] for r in entries.values()] == ["completed"] * 4
    windows = {}
    for run_id, entry in entries.items():
        result = json.loads((study_dir / "runs" / run_id / "result.json").read_text())
        assert result["environment"]["cpus_available"] == 1  # pinned to one core
        (core,) = entry["devices"]
        start = result["timings"]["window_started_at"]
        windows[run_id] = (core, start, start + result["timings"]["measure_s"])
    overlapped = 0
    for a, (core_a, start_a, end_a) in windows.items():
        for b, (core_b, start_b, end_b) in windows.items():
            if a < b and start_a < end_b and start_b < end_a:
                overlapped += 1
                assert core_a != core_b, f"{a} and {b} ran at once on {core_a}"
                assert b in entries[a]["overlapped_with"] and a in entries[b]["overlapped_with"]
    assert overlapped >= 1  # two workers on a four-run study do run side by side
    shown = run_llem("results", str(study_dir))
    assert shown.returncode == EXIT_OK and "measured while other runs were" in shown.stdout
    report = run_llem("report", str(study_dir))
    assert report.returncode == EXIT_OK
    assert "measured while other runs were" in (study_dir / "report.html").read_text()
    assert len(list((study_dir / "workers").glob("slot*.log"))) == 2


def test_ctrl_c_stops_every_worker_and_the_study_resumes(tmp_path, tiny_model, docker_client):
    study = tmp_path / "slow.yaml"
    study.write_text(
        f"name: slow\nmodel: {tiny_model}\nmax_input_tokens: 32\nmax_output_tokens: 64\n"
        "dataset: {source: builtin, n_prompts: 200}\ndecoder: {do_sample: false, min_new_tokens: 64}\n"
        "warmup: {n_warmup: 1}\nsweep:\n  pytorch.batch_size: [1, 2]\nstudy_execution: {n_cycles: 1}\n"
    )
    results = tmp_path / "results"
    common = ["--parallel", "2", "--results-dir", str(results), "--lock-dir", str(tmp_path / "locks")]
    proc = subprocess.Popen([llem_executable(), "run", str(study), *common],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        dirs = list(results.glob("slow_*"))
        beats = list(dirs[0].glob("runs/*/heartbeat")) if dirs else []
        if any('"measure"' in b.read_text() for b in beats):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == EXIT_INTERRUPTED, err
    (study_dir,) = results.iterdir()
    statuses = {r["run_id"]: r["status"] for r in runs(study_dir)}
    assert "interrupted" in statuses.values() and "running" not in statuses.values(), statuses
    assert json.loads((study_dir / "manifest.json").read_text())["status"] == "interrupted"
    left = [c.name for c in docker_client.containers.list(all=True, filters={"label": "llem.managed=true"})
            if c.labels.get("llem.study_dir", "").startswith(str(tmp_path))]  # fmt: skip
    assert left == []
    resumed = run_llem("run", str(study), *common, "--resume-dir", str(study_dir))
    assert resumed.returncode == EXIT_OK, resumed.stderr
    assert {r["status"] for r in runs(study_dir)} == {"completed"}
    assert not list(study_dir.glob("runs/*/attempts/*/result.json"))  # nothing completed twice


SLOW = (
    "name: slow\nmodel: {model}\nmax_input_tokens: 32\nmax_output_tokens: 64\n"
    "dataset: {{source: builtin, n_prompts: 200}}\ndecoder: {{do_sample: false, min_new_tokens: 64}}\n"
    "warmup: {{n_warmup: 1}}\nsweep:\n  pytorch.batch_size: [1, 2]\n"
    "study_execution: {{n_cycles: 1, experiment_order: sequential}}\n"
)


def ours(docker_client, tmp_path: Path) -> list:
    return [c for c in docker_client.containers.list(all=True, filters={"label": "llem.managed=true"})
            if c.labels.get("llem.study_dir", "").startswith(str(tmp_path))]  # fmt: skip


def wait_until(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout_s:.0f} s")


def test_llem_killed_stops_its_workers_and_a_resume_right_after_finishes_the_study(tmp_path, tiny_model, docker_client):
    study = tmp_path / "slow.yaml"
    study.write_text(SLOW.format(model=tiny_model))
    results = tmp_path / "results"
    common = ["--parallel", "2", "--results-dir", str(results), "--lock-dir", str(tmp_path / "locks")]
    proc = subprocess.Popen([llem_executable(), "run", str(study), *common],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip

    def measuring() -> bool:
        beats = list(results.glob("slow_*/runs/*/heartbeat"))
        return any('"measure"' in b.read_text() for b in beats)

    wait_until(measuring, 180, "no run reached its measurement")
    proc.send_signal(signal.SIGKILL)  # nothing of llem can tell its workers to stop
    proc.communicate(timeout=30)
    (study_dir,) = results.iterdir()
    resumed = run_llem("run", str(study), *common, "--resume-dir", str(study_dir))  # at once: claims may be live
    assert resumed.returncode == EXIT_OK, resumed.stderr + resumed.stdout
    doc = json.loads((study_dir / "manifest.json").read_text())
    assert {r["status"] for r in doc["runs"]} == {"completed"}
    assert doc["status"] == "completed"
    assert "failed" not in [h["status"] for h in doc["history"]], doc["history"]
    assert not list(study_dir.glob("runs/*/attempts/*/result.json"))  # the stopped attempts never completed
    assert ours(docker_client, tmp_path) == []
    for log in sorted((study_dir / "workers").glob("slot*.log")):
        assert log.read_text().count("--- ") == 2, f"{log.name} lost the first attempt's lines"


def test_a_worker_killed_mid_run_leaves_its_run_to_the_other_and_the_study_completes(
    tmp_path, tiny_model, docker_client
):
    study = tmp_path / "faults.yaml"
    study.write_text(
        f"name: faults\nmodel: {tiny_model}\nmax_input_tokens: 16\nmax_output_tokens: 8\n"
        "dataset: {source: builtin, n_prompts: 4}\ndecoder: {do_sample: false}\nwarmup: {n_warmup: 1}\n"
        "sweep:\n  pytorch.batch_size: [1, 2]\nstudy_execution: {n_cycles: 1, experiment_order: sequential}\n"
    )
    results = tmp_path / "results"
    proc = subprocess.Popen(
        [llem_executable(), "run", str(study), "--parallel", "2", "--results-dir", str(results),
         "--lock-dir", str(tmp_path / "locks")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "LLEM_FAULT_INJECTION": "slow_start:20@e001-c1"},
    )  # fmt: skip

    def first_run_container():
        return [c for c in ours(docker_client, tmp_path) if c.labels.get("llem.run") == "e001-c1"]

    (orphan,) = wait_until(first_run_container, 120, "no container for e001-c1")
    os.kill(int(orphan.labels["llem.host_pid"]), signal.SIGKILL)  # its worker, killed -9 mid-run
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_OK, err + out
    (study_dir,) = results.iterdir()
    doc = json.loads((study_dir / "manifest.json").read_text())
    entries = {r["run_id"]: r for r in doc["runs"]}
    assert {r["status"] for r in entries.values()} == {"completed"}
    assert entries["e001-c1"]["attempts"] == 2 and entries["e002-c1"]["attempts"] == 1
    assert doc["status"] == "completed" and doc["history"][-1]["detail"] == "2 of 2 runs completed"
    assert not list(study_dir.glob("runs/*/attempts/*/result.json"))  # the orphan was removed, never completed
    assert ours(docker_client, tmp_path) == []
