"""The Slurm executor's parts that need no Slurm: the script, the storage warning, the errors,
and workers sharing one study through claims (the real job arrays are in tests/docker)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from llem import slurm
from llem.errors import EXIT_ENVIRONMENT, EXIT_OK
from llem.manifest import ManifestStore
from llem.plan import make_plan
from llem.runner import ContainerOutcome
from llem.slurm import SlurmOptions, script, shared_storage_warning
from llem.study import load_study
from llem_agent.contract import RunRequest
from tests.helpers import run_llem
from tests.unit.test_studyloop import FakeRunner, make_loop, ok


def test_the_script_asks_for_what_the_study_needs(tmp_path, study_file):
    plan = make_plan(load_study(study_file))
    options = SlurmOptions(partition="gpu", account="green", time="02:00:00", tasks=3, gpus=2,
                           sbatch_lines=["#SBATCH --constraint=h100", "--exclusive"])  # fmt: skip
    text = script(tmp_path / "my study", plan, options, ["--image=pytorch=x:1", "--fail-fast"], pending=4)
    assert text.startswith("#!/bin/bash\n")
    for line in ("#SBATCH --array=0-2", "#SBATCH --partition=gpu", "#SBATCH --account=green",
                 "#SBATCH --time=02:00:00", "#SBATCH --gres=gpu:2", "#SBATCH --constraint=h100",
                 "#SBATCH --exclusive", f'#SBATCH --output="{tmp_path}/my study/slurm/%A_%a.out"'):  # fmt: skip
        assert line in text.splitlines(), line
    (command,) = [line for line in text.splitlines() if line.startswith("exec ")]
    assert f"worker '{tmp_path}/my study'" in command  # quoted for the shell
    # No --gpus $SLURM_JOB_GPUS (the node's numbers, wrong under a cgroup): the worker keeps to
    # CUDA_VISIBLE_DEVICES, which Slurm sets for the task.
    assert "--gpus" not in command and '"slurm-${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"' in command
    assert command.endswith("--image=pytorch=x:1 --fail-fast")


def test_a_cpu_study_asks_for_no_gpus_and_at_most_one_task_per_pending_run(tmp_path, study_file):
    plan = make_plan(load_study(study_file))
    text = script(tmp_path, plan, SlurmOptions(gpus=0), [], pending=2)
    assert "#SBATCH --array=0-1" in text and "--gres" not in text and "--gpus" not in text


def test_node_local_storage_is_warned_about(tmp_path):
    warning = shared_storage_warning(Path("/tmp/results"))
    assert warning is not None and "local to each node" in warning
    assert shared_storage_warning(Path("/dev/shm/x")) is not None


def test_dry_run_prints_the_script_and_writes_nothing(tmp_path, study_file):
    done = run_llem("run", str(study_file), "--executor", "slurm", "--dry-run", "--slurm-gpus", "0",
                    "--results-dir", str(tmp_path / "results"), "--no-pull", "--fail-fast", "--run-timeout", "60",
                    "--image", "pytorch=registry.example/llem/pytorch:1")  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr
    assert "#SBATCH --array=0-3" in done.stdout and " worker " in done.stdout
    (command,) = [line for line in done.stdout.splitlines() if line.startswith("exec ")]
    for flag in ("--no-pull", "--fail-fast", "--run-timeout=60.0", "--image=pytorch=registry.example/llem/pytorch:1"):
        assert flag in command.split(), flag  # the workers run with this invocation's host options
    assert not (tmp_path / "results").exists()


def test_no_sbatch_is_one_line_before_anything_is_planned(tmp_path, study_file):
    done = run_llem("run", str(study_file), "--executor", "slurm", "--slurm-gpus", "0",
                    "--results-dir", str(tmp_path / "results"), env={"PATH": str(tmp_path)})  # fmt: skip
    assert done.returncode == EXIT_ENVIRONMENT
    assert "sbatch not found" in done.stderr and "Traceback" not in done.stderr
    # was: a study directory planned and left `running` for a submission that could never happen
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_parallel_with_slurm_is_refused_and_the_dry_run_shows_the_plan(tmp_path, study_file):
    refused = run_llem("run", str(study_file), "--executor", "slurm", "--parallel", "2")
    assert refused.returncode == 2 and "--slurm-tasks" in refused.stderr  # was: --parallel ignored without a word
    shown = run_llem("run", str(study_file), "--executor", "slurm", "--dry-run", "--slurm-gpus", "0")
    assert shown.returncode == EXIT_OK, shown.stderr
    assert "run order: " in shown.stderr and "4 runs" in shown.stderr and shown.stdout.startswith("#!/bin/bash")


def test_a_refused_submission_says_what_slurm_said(tmp_path, study_file):
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid account' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    path = f"{fake.parent}:{os.environ['PATH']}"
    done = run_llem("run", str(study_file), "--executor", "slurm", "--slurm-gpus", "0",
                    "--results-dir", str(tmp_path / "results"), env={"PATH": path})  # fmt: skip
    assert done.returncode == EXIT_ENVIRONMENT
    assert "Slurm refused the job: sbatch: error: Batch job submission failed: Invalid account" in done.stderr


def test_two_workers_share_one_study_and_run_every_run_once(tmp_path, study_file):
    first = make_loop(tmp_path, study_file, FakeRunner())
    first.preflight()
    study_dir = first.prepare()
    first.release()
    runners = [FakeRunner(), FakeRunner()]
    workers = [make_loop(tmp_path, study_file, runner) for runner in runners]
    for worker in workers:
        worker.attach(study_dir)
    threads = [threading.Thread(target=w.execute, kwargs={"worker": f"w{i}"}) for i, w in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    manifest = ManifestStore.load(study_dir)
    assert manifest.status == "completed"
    assert [e.attempts for e in manifest.runs] == [1, 1, 1, 1]
    ran = sorted(s.labels["llem.run"] for runner in runners for s in runner.specs)
    assert ran == sorted(e.run_id for e in manifest.runs)  # each run by exactly one worker


def test_a_worker_judged_dead_does_not_record_the_run_it_lost(tmp_path, study_file):
    def stolen(run_dir: Path, request: RunRequest) -> ContainerOutcome:
        # Mid-run, another worker broke this claim as stale and took the run.
        (run_dir.parent.parent / "claims" / request.run_id).write_text("other@elsewhere:1:abc\n")
        return ok(run_dir, request)

    loop = make_loop(tmp_path, study_file, FakeRunner({"e001-c1": stolen}))
    loop.preflight()
    study_dir = loop.prepare()
    loop.execute()
    runs = {e.run_id: e for e in ManifestStore.load(study_dir).runs}
    assert runs["e001-c1"].status == "running"  # the new owner's to finish, not this worker's
    assert [e.status for r, e in runs.items() if r != "e001-c1"] == ["completed"] * 3
    assert (study_dir / "claims" / "e001-c1").read_text().startswith("other@")  # never released by the loser


def test_llem_worker_on_bad_input_is_one_line(tmp_path, study_file):
    done = run_llem("worker", str(tmp_path))
    assert done.returncode == 2 and "not a llem study directory" in done.stderr and "Traceback" not in done.stderr
    loop = make_loop(tmp_path, study_file, FakeRunner())
    loop.preflight()
    study_dir = loop.prepare()
    loop.release()
    wrong = run_llem("worker", str(study_dir), "--engine", "vllm")
    assert wrong.returncode == 2 and "has no vllm experiment" in wrong.stderr
    stale = run_llem("worker", str(study_dir), "--stale-after", "0")
    assert stale.returncode == 2 and "--stale-after must be positive" in stale.stderr


def test_wait_follows_the_job_past_one_task_stopping_on_its_own(tmp_path, study_file, monkeypatch):
    """Task A's circuit breaker records circuit_open while task B still runs what is left:
    `--wait` must follow B to the end, not report the study over at A's word."""
    loop = make_loop(tmp_path, study_file, FakeRunner())
    loop.preflight()
    study_dir = loop.prepare()
    loop.release()
    store = ManifestStore(study_dir, ManifestStore.load(study_dir))
    first, *rest = [e.run_id for e in store.manifest.runs]
    store.update_run(first, status="failed")
    store.set_status("circuit_open")  # task A stopped; the other runs are pending for task B
    polls: list[str] = []

    def task_b_alive(job_id: str) -> bool:
        polls.append(job_id)
        if len(polls) == 2:  # task B finishes the rest and concludes the study
            store.update_runs({run_id: {"status": "completed"} for run_id in rest})
            store.set_status("failed")
        return len(polls) < 3

    monkeypatch.setattr(slurm, "job_alive", task_b_alive)
    seen: list[tuple[int, int]] = []
    assert slurm.follow(study_dir, "42", lambda done, total: seen.append((done, total)), poll_s=0.01) == ("failed", 1)
    assert seen[-1] == (3, 4)


def test_wait_reports_a_stopped_study_once_the_job_has_left_the_queue(tmp_path, study_file, monkeypatch):
    loop = make_loop(tmp_path, study_file, FakeRunner())
    loop.preflight()
    study_dir = loop.prepare()
    loop.release()
    ManifestStore(study_dir, ManifestStore.load(study_dir)).set_status(
        "circuit_open"
    )  # every task stopped with runs pending
    monkeypatch.setattr(slurm, "job_alive", lambda job_id: False)
    assert slurm.follow(study_dir, "42", lambda done, total: None, poll_s=0.01) == ("circuit_open", 4)


def fake_squeue(tmp_path: Path, monkeypatch, code: int, out: str = "", err: str = "") -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    squeue = bin_dir / "squeue"
    squeue.write_text(f"#!/bin/sh\nprintf '%s' '{out}'\nprintf '%s' '{err}' >&2\nexit {code}\n")
    squeue.chmod(squeue.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_a_job_is_gone_only_when_slurm_says_so(tmp_path, monkeypatch):
    fake_squeue(tmp_path, monkeypatch, 1, err="slurm_load_jobs error: Socket timed out on send/recv operation")
    assert slurm.job_alive("42")  # was: gone, and --wait told the user to resubmit while both tasks ran
    fake_squeue(tmp_path, monkeypatch, 1, err="slurm_load_jobs error: Invalid job id specified")
    assert not slurm.job_alive("42")
    fake_squeue(tmp_path, monkeypatch, 0, out="")
    assert not slurm.job_alive("42")
    fake_squeue(tmp_path, monkeypatch, 0, out="42_0")
    assert slurm.job_alive("42")
