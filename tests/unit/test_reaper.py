"""The reaper's manifest side: an orphan's run is marked interrupted; the study only when no
other worker still holds a run of it."""

from __future__ import annotations

import os
from pathlib import Path

from llem.claims import ClaimBoard
from llem.manifest import Manifest, ManifestStore, RunEntry
from llem.reaper import mark_interrupted


def _study(tmp_path: Path) -> Path:
    runs = [RunEntry(run_id=r, experiment_index=i, cycle=1, config_hash="x", image="i", status="running")
            for i, r in enumerate(("e001-c1", "e002-c1"))]  # fmt: skip
    manifest = Manifest(study_name="s", study_id="s", study_design_hash="h", llem_version="0", n_cycles=1,
                        experiment_order="sequential", shuffle_seed=None, runs=runs)  # fmt: skip
    ManifestStore(tmp_path, manifest).publish()
    return tmp_path


def test_an_orphans_run_is_interrupted_and_the_study_too_when_nobody_else_runs_it(tmp_path: Path) -> None:
    study_dir = _study(tmp_path)
    mark_interrupted(study_dir, "e001-c1")
    manifest = ManifestStore.load(study_dir)
    assert manifest.run("e001-c1").status == "interrupted" and manifest.status == "interrupted"


def test_the_interrupted_study_says_what_is_left_by_the_one_rule(tmp_path: Path) -> None:
    study_dir = _study(tmp_path)
    mark_interrupted(study_dir, "e001-c1")
    last = ManifestStore.load(study_dir).history[-1]
    assert last["status"] == "interrupted" and last["detail"] == "0 of 2 runs completed; 1 interrupted, 1 running"


def test_the_study_goes_on_while_another_worker_holds_a_run_of_it(tmp_path: Path) -> None:
    study_dir = _study(tmp_path)
    assert ClaimBoard(study_dir, worker="alive").claim("e002-c1") is not None  # this process: alive
    mark_interrupted(study_dir, "e001-c1")
    manifest = ManifestStore.load(study_dir)
    assert manifest.run("e001-c1").status == "interrupted"
    assert manifest.status == "running" and manifest.run("e002-c1").status == "running"


def test_a_zombie_is_not_alive():
    """A worker killed -9 that its llem has not reaped yet is a zombie: it holds no run, and its
    leftover container must be removable (was: "still run by llem process N")."""
    import subprocess
    import sys
    import time

    from llem.procs import process_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # exited, not yet waited for: a zombie
        state = Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0]
        if state == "Z":
            break
        time.sleep(0.01)
    assert not process_alive(child.pid)
    child.wait()
    assert not process_alive(child.pid)
    assert process_alive(os.getpid())


def test_a_container_removed_while_listing_or_reaping_is_no_crash():
    """Two llem started at once (a parallel test, two terminals): the Docker SDK inspects each
    container it lists, and one removed in between raised NotFound out of llem (exit 70)."""
    import docker.errors

    from llem.docker_runner import DockerRunner

    class Gone:
        def remove(self, force: bool) -> None:
            raise docker.errors.NotFound("No such container")

    class Containers:
        calls = 0

        def list(self, **_: object) -> list[object]:
            self.calls += 1
            if self.calls == 1:
                raise docker.errors.NotFound("No such container: c121eef658a8")
            return ["listed again"]

    containers = Containers()

    class Client:
        pass

    client = Client()
    client.containers = containers  # type: ignore[attr-defined]
    runner = DockerRunner(client_factory=lambda: client)  # type: ignore[arg-type, return-value]
    assert runner.managed_containers() == ["listed again"]
    assert containers.calls == 2
    assert DockerRunner.remove_gone(Gone()) is False  # type: ignore[arg-type]
