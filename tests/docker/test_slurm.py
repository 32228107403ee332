"""The Slurm executor on a real Slurm: Debian's slurm-wlm and munge, one node, started by
tests/tools/ensure-slurm.sh (which `make test` runs). Jobs are real job arrays whose tasks
run `llem worker`, which runs the study's runs through real containers.

GRES: a second one-node Slurm (LLEM_SLURM_GPUS=2, its own ports and folder, so the plain node's
tests are untouched) declares two GPUs for the simulated GPUs of --simulate-gpus. Slurm's gres/gpu
drops a GPU without File= ("Removing file-less GPU ... from final GRES list": the node registers
0 < 2 GPUs and is INVAL, so gres.conf Name=gpu Count=2 alone cannot work); its gres.conf names two
placeholder character devices (copies of /dev/null) instead, and Slurm then schedules gpu GRES and
sets CUDA_VISIBLE_DEVICES for each task as on a GPU node."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from llem.container import LABEL_STUDY_DIR
from llem.errors import EXIT_OK
from llem_agent.contract.simulation import simulated_uuid
from tests.conftest import REPO
from tests.helpers import run_llem

SLURM_BASE = os.environ.get("LLEM_SLURM_BASE", "/tmp/llem-slurm")
SLOW = """
name: cancelled
model: {model}
max_input_tokens: 32
max_output_tokens: 64
dataset: {{source: builtin, n_prompts: 200}}
decoder: {{do_sample: false, min_new_tokens: 64}}
warmup: {{n_warmup: 1}}
sweep:
  pytorch.batch_size: [1, 2]
study_execution: {{n_cycles: 1, experiment_order: sequential}}
"""


@pytest.fixture(scope="session")
def slurm() -> dict[str, str]:
    """SLURM_CONF of the one-node Slurm, started if it is not up."""
    done = subprocess.run(
        ["bash", str(REPO / "tests" / "tools" / "ensure-slurm.sh")], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"no Slurm ({done.stderr.strip()[-400:]}); `make test` starts one (tests/tools/ensure-slurm.sh)")
    env = {"SLURM_CONF": f"{SLURM_BASE}/slurm.conf"}
    os.environ.update(env)
    return env


def study_dir_of(results: Path) -> Path:
    (found,) = results.iterdir()
    return found


def manifest(study_dir: Path) -> dict:
    return json.loads((study_dir / "manifest.json").read_text())


def no_attempt_has_a_result(study_dir: Path) -> bool:
    return not list(study_dir.glob("runs/*/attempts/*/result.json"))


def wait_for_job_end(job: str, env: dict[str, str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True, check=False,
                               env={**os.environ, **env})  # fmt: skip
        if queue.returncode == 0 and not queue.stdout.strip():
            return
        time.sleep(1)
    pytest.fail(f"Slurm job {job} still in the queue after {timeout_s:.0f} s")


def test_the_demo_study_as_a_two_task_array(tmp_path, slurm, tiny_model, docker_client):
    results = tmp_path / "results"
    done = run_llem(
        "run", str(REPO / "examples" / "quickstart.yaml"), "--executor", "slurm", "--slurm-tasks", "2", "--wait",
        "--results-dir", str(results), "--lock-dir", str(tmp_path / "locks"), env=slurm,
    )  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr + done.stdout
    assert "local to each node" in done.stderr  # the study directory is under /tmp: warned
    study_dir = study_dir_of(results)
    doc = manifest(study_dir)
    assert doc["status"] == "completed"
    assert [r["status"] for r in doc["runs"]] == ["completed"] * 4
    assert all(r["attempts"] == 1 and r["host"] for r in doc["runs"])
    (submitted,) = [h for h in doc["history"] if h["status"] == "submitted"]
    script = (study_dir / "slurm" / "job.sbatch").read_text()
    assert "#SBATCH --array=0-1" in script and " worker " in script
    # --wait returns once the results are whole; a task that waited for the other's last run may
    # still be writing its last line: read the logs once Slurm says the job is over.
    wait_for_job_end(submitted["job"], slurm)
    logs = sorted((study_dir / "slurm").glob(f"{submitted['job']}_*.out"))
    assert len(logs) == 2
    ran = [int(m.group(1)) for log in logs for m in re.finditer(r"ran (\d+) runs?\b", log.read_text())]
    assert sum(ran) == 4  # every run by exactly one task
    for run in doc["runs"]:
        result = json.loads((study_dir / "runs" / run["run_id"] / "result.json").read_text())
        assert result["run_id"] == run["run_id"] and result["output_tokens"] > 0
    assert run_llem("results", str(study_dir)).returncode == EXIT_OK


def test_a_cancelled_task_loses_nothing_and_resume_submits_what_is_left(tmp_path, slurm, tiny_model, docker_client):
    study = tmp_path / "cancelled.yaml"
    study.write_text(SLOW.format(model=tiny_model))
    results = tmp_path / "results"
    common = ["--executor", "slurm", "--slurm-tasks", "1", "--results-dir", str(results),
              "--lock-dir", str(tmp_path / "locks")]  # fmt: skip
    done = run_llem("run", str(study), *common, env=slurm)
    assert done.returncode == EXIT_OK, done.stderr
    job = re.search(r"Slurm job (\d+)", done.stderr)
    assert job, done.stderr
    study_dir = study_dir_of(results)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # cancel in the middle of the second run's measurement
        runs = manifest(study_dir)["runs"]
        assert "failed" not in {r["status"] for r in runs}, runs
        beat = study_dir / "runs" / "e002-c1" / "heartbeat"
        if runs[0]["status"] == "completed" and beat.exists() and '"measure"' in beat.read_text():
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the second run never reached its measurement: {manifest(study_dir)['runs']}")
    subprocess.run(["scancel", job.group(1)], check=True, env={**os.environ, **slurm})
    for _ in range(120):
        queue = subprocess.run(["squeue", "-h", "-j", job.group(1)], capture_output=True, text=True, check=False)
        if not queue.stdout.strip():
            break
        time.sleep(1)
    runs = {r["run_id"]: r for r in manifest(study_dir)["runs"]}
    assert runs["e001-c1"]["status"] == "completed"
    assert runs["e002-c1"]["status"] == "interrupted"  # the worker stopped its container and said so
    left = [c.name for c in docker_client.containers.list(all=True, filters={"label": LABEL_STUDY_DIR})
            if c.labels.get(LABEL_STUDY_DIR, "").startswith(str(tmp_path))]  # fmt: skip
    assert left == []
    first = (study_dir / "runs" / "e001-c1" / "result.json").read_bytes()

    resumed = run_llem("run", str(study), *common, "--resume-dir", str(study_dir), "--wait", env=slurm)
    assert resumed.returncode == EXIT_OK, resumed.stderr + resumed.stdout
    doc = manifest(study_dir)
    assert doc["status"] == "completed"
    runs = {r["run_id"]: r for r in doc["runs"]}
    assert runs["e001-c1"]["attempts"] == 1 and runs["e002-c1"]["attempts"] == 2
    assert (study_dir / "runs" / "e001-c1" / "result.json").read_bytes() == first  # never run again
    assert no_attempt_has_a_result(study_dir)  # the cancelled attempt never completed: nothing ran twice
    assert json.loads((study_dir / "runs" / "e002-c1" / "result.json").read_text())["run_id"] == "e002-c1"
    assert len([h for h in doc["history"] if h["status"] == "submitted"]) == 2


def test_an_unknown_partition_is_one_line_and_the_study_can_be_submitted_again(tmp_path, slurm, tiny_model):
    results = tmp_path / "results"
    done = run_llem(
        "run", str(REPO / "examples" / "quickstart.yaml"), "--executor", "slurm", "--slurm-partition", "nope",
        "--results-dir", str(results), env=slurm,
    )  # fmt: skip
    assert done.returncode != 0
    (line,) = done.stderr.strip().splitlines()[-1:]
    assert "Slurm refused the job" in line and "--resume-dir" in line and "Traceback" not in done.stderr
    assert all(r["status"] == "pending" for r in manifest(study_dir_of(results))["runs"])


def test_a_results_directory_with_a_space_makes_a_script_slurm_accepts(tmp_path, slurm):
    """`#SBATCH --output=/x/my results/...` made sbatch fail with "Invalid directive found in
    batch script: results/...". The script is checked by the real sbatch (--test-only: parsed,
    scheduled on paper, never run)."""
    done = run_llem("run", str(REPO / "examples" / "quickstart.yaml"), "--executor", "slurm", "--dry-run",
                    "--results-dir", str(tmp_path / "my results"), env=slurm)  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr
    script = tmp_path / "job.sbatch"
    script.write_text(done.stdout)
    assert f'#SBATCH --output="{(tmp_path / "my results").resolve()}/' in done.stdout
    checked = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, check=False,
                             env={**os.environ, **slurm}, timeout=60)  # fmt: skip
    assert checked.returncode == 0, checked.stderr


def test_a_task_cancelled_after_the_other_passed_its_run_leaves_that_run_to_the_other(
    tmp_path, slurm, tiny_model, docker_client
):
    """Task A holds e001-c1, task B took e002-c1 and so passed e001-c1 by; A is cancelled. B must
    look at e001-c1 again once it is free, run it, and end the study completed."""
    study = tmp_path / "cancelled.yaml"
    study.write_text(SLOW.format(model=tiny_model))
    results = tmp_path / "results"
    done = run_llem("run", str(study), "--executor", "slurm", "--slurm-tasks", "2", "--results-dir", str(results),
                    "--lock-dir", str(tmp_path / "locks"), env=slurm)  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr
    job = re.search(r"Slurm job (\d+)", done.stderr)
    assert job, done.stderr
    study_dir = study_dir_of(results)
    claims = study_dir / "claims"
    deadline = time.monotonic() + 240
    while not ((claims / "e001-c1").exists() and (claims / "e002-c1").exists()):  # each task holds one run
        assert time.monotonic() < deadline, f"the two tasks never held a run each: {manifest(study_dir)['runs']}"
        time.sleep(0.2)
    holder = re.match(r"slurm-(\d+_\d+)@", (claims / "e001-c1").read_text())
    assert holder, (claims / "e001-c1").read_text()
    subprocess.run(["scancel", holder.group(1)], check=True, env={**os.environ, **slurm})
    wait_for_job_end(job.group(1), slurm, timeout_s=900)  # the other task runs both runs, on a busy 2-core host
    doc = manifest(study_dir)
    assert [r["status"] for r in doc["runs"]] == ["completed", "completed"], doc["runs"]
    assert doc["status"] == "completed" and doc["history"][-1]["detail"] == "2 of 2 runs completed"
    assert no_attempt_has_a_result(study_dir)
    left = [c.name for c in docker_client.containers.list(all=True, filters={"label": LABEL_STUDY_DIR})
            if c.labels.get(LABEL_STUDY_DIR, "").startswith(str(tmp_path))]  # fmt: skip
    assert left == []


SIMULATED = """
name: gres
model: {model}
engine: transformers
max_input_tokens: 16
max_output_tokens: 8
dataset: {{source: builtin, n_prompts: 8}}
decoder: {{do_sample: false}}
warmup: {{n_warmup: 1, thermal_floor_seconds: 30}}
baseline: {{strategy: fresh, duration_seconds: 5}}
sweep:
  pytorch.batch_size: [1, 2]
study_execution: {{n_cycles: 1, experiment_order: sequential, config_gap_seconds: 0, cycle_gap_seconds: 0}}
"""


@pytest.fixture(scope="session")
def slurm_gres() -> dict[str, str]:
    """SLURM_CONF of a second one-node Slurm whose node declares 2 GPUs as GRES (its own ports)."""
    base = "/tmp/llem-slurm-gres"
    done = subprocess.run(["bash", str(REPO / "tests" / "tools" / "ensure-slurm.sh")], capture_output=True, text=True,
                          check=False, env={**os.environ, "LLEM_SLURM_GPUS": "2", "LLEM_SLURM_BASE": base})  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"no GRES Slurm ({done.stderr.strip()[-400:]}); tests/tools/ensure-slurm.sh with LLEM_SLURM_GPUS=2")
    return {"SLURM_CONF": f"{base}/slurm.conf"}


def test_an_array_asks_for_gres_gpus_and_its_tasks_run_on_the_simulated_gpus_slurm_gives(
    tmp_path, slurm_gres, tiny_model, docker_client
):
    # The node declares two GPUs (gres.conf); the study runs on two simulated GPUs: sinfo shows GPU
    # GRES, so each task asks for --gres=gpu:1, and its worker keeps to the GPU Slurm gave it
    # (CUDA_VISIBLE_DEVICES, set by Slurm) as on a GPU cluster.
    study = tmp_path / "gres.yaml"
    study.write_text(SIMULATED.format(model=tiny_model))
    results = tmp_path / "results"
    done = run_llem(
        "run", str(study), "--executor", "slurm", "--slurm-tasks", "2", "--wait", "--simulate-gpus", "2",
        "--results-dir", str(results), "--lock-dir", str(tmp_path / "locks"), env=slurm_gres,
    )  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr + done.stdout
    study_dir = study_dir_of(results)
    script = (study_dir / "slurm" / "job.sbatch").read_text()
    assert "#SBATCH --gres=gpu:1" in script and "--simulate-gpus=2" in script
    doc = manifest(study_dir)
    (submitted,) = [h for h in doc["history"] if h["status"] == "submitted"]
    wait_for_job_end(submitted["job"], slurm_gres)
    shown = subprocess.run(["scontrol", "show", "job", submitted["job"]], capture_output=True, text=True,
                           check=False, env={**os.environ, **slurm_gres})  # fmt: skip
    assert shown.stdout.count("TresPerNode=gres:gpu:1") == 2, shown.stdout  # both tasks asked for one GPU
    assert [r["status"] for r in doc["runs"]] == ["completed"] * 2
    for run in doc["runs"]:
        (device,) = run["devices"]
        result = json.loads((study_dir / "runs" / run["run_id"] / "result.json").read_text())
        assert result["environment"]["gpus_simulated"] is True
        assert [g["uuid"] for g in result["environment"]["gpus"]] == [simulated_uuid(int(device[len("gpu-sim") :]))]
    # The two tasks ran side by side, each on the one GPU Slurm gave it: one run on each.
    assert sorted(r["devices"][0] for r in doc["runs"]) == ["gpu-sim0", "gpu-sim1"]
    logs = sorted((study_dir / "slurm").glob(f"{submitted['job']}_*.out"))
    assert [sum(int(n) for n in re.findall(r"ran (\d+) runs?\b", log.read_text())) for log in logs] == [1, 1]
