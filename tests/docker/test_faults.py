"""Fault suite through real containers: each fault ends with a truthful manifest, no
completed result lost or duplicated, no container with our labels left, no lock held."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import docker
import pytest

from llem.container import LABEL_STUDY_DIR
from llem.errors import EXIT_ENVIRONMENT, EXIT_INTERRUPTED, EXIT_RUNS_FAILED
from llem.locks import DeviceLocks
from tests.helpers import llem_executable, run_llem

STUDY = """
name: faults
model: {model}
max_input_tokens: 16
max_output_tokens: 8
dataset: {{source: builtin, n_prompts: 4}}
decoder: {{do_sample: false}}
warmup: {{n_warmup: 1}}
sweep:
  pytorch.batch_size: [1, 2]
study_execution: {{n_cycles: 1, experiment_order: sequential}}
"""


@pytest.fixture
def study(tmp_path: Path, tiny_model: Path) -> Path:
    path = tmp_path / "faults.yaml"
    path.write_text(STUDY.format(model=tiny_model))
    return path


def args(tmp_path: Path, study: Path, *extra: str) -> list[str]:
    return [
        "run",
        str(study),
        "--results-dir",
        str(tmp_path / "results"),
        "--lock-dir",
        str(tmp_path / "locks"),
        *extra,
    ]


def manifest(tmp_path: Path) -> dict:
    (study_dir,) = (tmp_path / "results").iterdir()
    return json.loads((study_dir / "manifest.json").read_text())


def statuses(doc: dict) -> dict[str, tuple[str, str | None]]:
    return {r["run_id"]: (r["status"], r["failure"]["kind"] if r["failure"] else None) for r in doc["runs"]}


def assert_clean(tmp_path: Path, client: docker.DockerClient) -> None:
    left = [c for c in client.containers.list(all=True, filters={"label": f"{LABEL_STUDY_DIR}"})
            if c.labels.get(LABEL_STUDY_DIR, "").startswith(str(tmp_path))]  # fmt: skip
    assert left == [], f"containers left behind: {[c.name for c in left]}"
    assert DeviceLocks(["cpu"], tmp_path / "locks").try_acquire(), "the device lock is still held"


def completed_results_are_whole(tmp_path: Path, doc: dict) -> None:
    (study_dir,) = (tmp_path / "results").iterdir()
    for run in doc["runs"]:
        if run["status"] == "completed":
            result = json.loads((study_dir / "runs" / run["run_id"] / "result.json").read_text())
            assert result["run_id"] == run["run_id"]
            assert result["output_tokens"] > 0


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("crash@e001-c1", "no_result"),
        ("error@e001-c1", "agent_error"),
        ("corrupt@e001-c1", "corrupt_result"),
    ],
)
def test_agent_faults_fail_the_run_and_the_study_goes_on(tmp_path, study, docker_client, fault, kind):
    proc = run_llem(*args(tmp_path, study), env={"LLEM_FAULT_INJECTION": fault})
    assert proc.returncode == EXIT_RUNS_FAILED, proc.stderr
    doc = manifest(tmp_path)
    assert statuses(doc) == {"e001-c1": ("failed", kind), "e002-c1": ("completed", None)}
    assert doc["status"] == "failed"
    completed_results_are_whole(tmp_path, doc)
    assert_clean(tmp_path, docker_client)


def test_hung_agent_is_killed_on_a_stale_heartbeat(tmp_path, study, docker_client):
    proc = run_llem(*args(tmp_path, study, "--stall-timeout", "4"), env={"LLEM_FAULT_INJECTION": "hang@e001-c1"})
    assert proc.returncode == EXIT_RUNS_FAILED, proc.stderr
    assert statuses(manifest(tmp_path)) == {"e001-c1": ("failed", "hung"), "e002-c1": ("completed", None)}
    assert_clean(tmp_path, docker_client)


def test_slow_silent_load_is_not_mistaken_for_a_hang_but_the_run_timeout_still_holds(tmp_path, study, docker_client):
    proc = run_llem(
        *args(tmp_path, study, "--stall-timeout", "3", "--run-timeout", "20"),
        env={"LLEM_FAULT_INJECTION": "slow_start:6@e001-c1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert statuses(manifest(tmp_path))["e001-c1"] == ("completed", None)
    timed = tmp_path / "timed"
    timed.mkdir()
    proc = run_llem(*args(timed, study, "--run-timeout", "5"), env={"LLEM_FAULT_INJECTION": "slow_start:30@e001-c1"})
    assert proc.returncode == EXIT_RUNS_FAILED
    assert statuses(manifest(timed))["e001-c1"] == ("failed", "timeout")
    assert_clean(timed, docker_client)


def test_container_memory_limit_kill_is_reported_as_oom(tmp_path, study, docker_client):
    proc = run_llem(*args(tmp_path, study, "--container-memory", "600m"), env={"LLEM_FAULT_INJECTION": "oom@e001-c1"})
    assert proc.returncode == EXIT_RUNS_FAILED, proc.stderr
    assert statuses(manifest(tmp_path)) == {"e001-c1": ("failed", "oom"), "e002-c1": ("completed", None)}
    assert_clean(tmp_path, docker_client)


def wait_for_container(
    client: docker.DockerClient, tmp_path: Path, timeout_s: float = 60
) -> docker.models.containers.Container:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for container in client.containers.list(filters={"label": LABEL_STUDY_DIR}):
            if container.labels[LABEL_STUDY_DIR].startswith(str(tmp_path)):
                return container
        time.sleep(0.2)
    raise AssertionError("no llem container appeared")


def start_llem(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [llem_executable(), *argv], env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_container_killed_from_outside(tmp_path, study, docker_client):
    proc = start_llem(args(tmp_path, study), {"LLEM_FAULT_INJECTION": "slow_start:30@e001-c1"})
    wait_for_container(docker_client, tmp_path).kill()
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_RUNS_FAILED, err
    assert statuses(manifest(tmp_path)) == {"e001-c1": ("failed", "killed"), "e002-c1": ("completed", None)}
    assert_clean(tmp_path, docker_client)


def test_sigint_mid_run_stops_cleanly_and_resume_finishes(tmp_path, study, docker_client):
    proc = start_llem(args(tmp_path, study), {"LLEM_FAULT_INJECTION": "slow_start:30@e002-c1"})
    container = wait_for_container(docker_client, tmp_path)
    while container.labels["llem.run"] != "e002-c1":  # let e001 complete first
        time.sleep(0.2)
        container = wait_for_container(docker_client, tmp_path)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "Traceback" not in err
    doc = manifest(tmp_path)
    assert doc["status"] == "interrupted"
    assert statuses(doc) == {"e001-c1": ("completed", None), "e002-c1": ("interrupted", None)}
    completed_results_are_whole(tmp_path, doc)
    assert_clean(tmp_path, docker_client)

    resumed = run_llem(*args(tmp_path, study, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    doc = manifest(tmp_path)
    assert doc["status"] == "completed"
    assert [r["attempts"] for r in doc["runs"]] == [1, 2]
    completed_results_are_whole(tmp_path, doc)


def test_host_sigkill_then_resume_reaps_the_orphan_and_finishes(tmp_path, study, docker_client):
    proc = start_llem(args(tmp_path, study), {"LLEM_FAULT_INJECTION": "slow_start:20@e001-c1"})
    orphan = wait_for_container(docker_client, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    orphan.reload()
    assert orphan.status == "running"  # nobody is left to stop it
    assert DeviceLocks(["cpu"], tmp_path / "locks").try_acquire(), "the kernel did not free the lock"

    resumed = run_llem(*args(tmp_path, study, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"removed orphan container {orphan.name}" in resumed.stderr
    doc = manifest(tmp_path)
    assert doc["status"] == "completed"
    assert statuses(doc) == {"e001-c1": ("completed", None), "e002-c1": ("completed", None)}
    assert [h["status"] for h in doc["history"]] == ["running", "interrupted", "running", "completed"]
    assert_clean(tmp_path, docker_client)


def test_second_study_on_a_busy_device_fails_at_once_or_waits(tmp_path, study, docker_client):
    first = start_llem(args(tmp_path, study), {"LLEM_FAULT_INJECTION": "slow_start:8@e001-c1"})
    wait_for_container(docker_client, tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    busy = run_llem(*args(other, study, "--no-wait", "--lock-dir", str(tmp_path / "locks")))
    assert busy.returncode == EXIT_ENVIRONMENT
    assert "are locked by another study" in busy.stderr.strip().splitlines()[-1]
    assert not any((other / "results").glob("*")), "--no-wait on a busy device left a study directory behind"
    queued = run_llem(*args(other, study, "--lock-dir", str(tmp_path / "locks")))
    first.communicate(timeout=120)
    assert first.returncode == 0
    assert queued.returncode == 0, queued.stderr
    assert "waiting for devices ['cpu']" in queued.stderr
    assert_clean(tmp_path, docker_client)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_full_or_read_only_results_directory(tmp_path, study, docker_client):
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        # Leave room for the study's own small files but not for a whole run's result.
        (mount / "filler").write_bytes(b"\0" * (64 * 1024 - 12 * 1024))
        proc = run_llem(*args(mount, study))
        assert proc.returncode == EXIT_ENVIRONMENT, proc.stdout + proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("llem: error:")
        assert "Traceback" not in proc.stderr
        assert_clean(mount, docker_client)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        proc = run_llem(*args(mount, study))
        assert proc.returncode == EXIT_ENVIRONMENT
        assert "Read-only file system" in proc.stderr
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_second_sigint_forces_exit_and_resume_cleans_up_and_finishes(tmp_path, study, docker_client):
    proc = start_llem(args(tmp_path, study), {"LLEM_FAULT_INJECTION": "slow_start:30@e001-c1"})
    wait_for_container(docker_client, tmp_path)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "Traceback" not in err
    # Whether the second signal cut the graceful stop short or came after it, the next run
    # removes anything left behind and finishes the study.
    resumed = run_llem(*args(tmp_path, study, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    doc = manifest(tmp_path)
    assert doc["status"] == "completed"
    completed_results_are_whole(tmp_path, doc)
    assert_clean(tmp_path, docker_client)


def test_sigint_while_the_first_container_is_created_leaves_no_container_and_no_result(tmp_path, study, docker_client):
    """The interrupt lands while Docker creates the study's first container (on its create
    event): llem must still know of that container, remove it and mark its run interrupted."""
    events = docker_client.events(
        decode=True, filters={"type": "container", "event": "create", "label": LABEL_STUDY_DIR}
    )
    proc = start_llem(args(tmp_path, study), {})
    sent = threading.Event()

    def interrupt_on_create() -> None:
        for event in events:
            if event.get("Actor", {}).get("Attributes", {}).get(LABEL_STUDY_DIR, "").startswith(str(tmp_path)):
                proc.send_signal(signal.SIGINT)
                sent.set()
                return

    watcher = threading.Thread(target=interrupt_on_create, daemon=True)
    watcher.start()
    try:
        _out, err = proc.communicate(timeout=120)
    finally:
        events.close()
    assert sent.is_set(), "no create event of the study's container was seen"
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "Traceback" not in err
    assert_clean(tmp_path, docker_client)  # nothing left measuring with its device lock released
    doc = manifest(tmp_path)
    assert doc["status"] == "interrupted"
    assert statuses(doc)["e001-c1"] == ("interrupted", None)
    (study_dir,) = (tmp_path / "results").iterdir()
    assert not list(study_dir.glob("runs/*/result.json")), "a run the manifest calls interrupted wrote a result"
