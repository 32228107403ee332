"""Messages issue 23 (item 15) found wrong, held to what they say now: ``llem pull`` never calls
an image it has "not on this host", and a stopped worker's hint names ``--resume-dir`` (a worker
has no study file to ``--resume``: the study directory is what continues)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llem import cli_cluster, executors
from llem.cli import main
from llem.errors import EXIT_OK, Interrupted
from llem.manifest import ManifestStore
from llem.runner import PullProgress
from llem_agent.contract import RunRequest
from tests.unit.test_studyloop import FakeRunner, make_loop

DIGEST = "llem/pytorch@sha256:" + "e" * 64


class PullingDocker:
    """The docker runner's pull side: every image is here already and is pulled again anyway."""

    kind = "docker"

    def __init__(self) -> None:
        self.pulled: list[str] = []

    def pull(self, image: str, on_progress: PullProgress) -> str | None:
        self.pulled.append(image)
        on_progress(image, 0, 2**20)
        on_progress(image, 2**20, 2**20)
        return None

    def image_problem(self, image: str) -> str | None:
        return None

    def describe(self, images: Any) -> Any:
        return {}, {image: {"repo_digests": [DIGEST]} for image in images}


def test_llem_pull_does_not_call_the_images_it_pulls_missing(
    study_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    docker = PullingDocker()
    monkeypatch.setattr(cli_cluster, "make_runners", lambda study, asked, user, on_pull=None: ({"pytorch": docker},
                                                                                              docker))  # fmt: skip
    assert main(["pull", str(study_file), "--image", "pytorch=llem/pytorch:test"]) == EXIT_OK
    out, err = capsys.readouterr()
    assert docker.pulled == ["llem/pytorch:test"]
    assert err.splitlines()[0] == "pulling llem/pytorch:test"  # was: "pulling llem/pytorch:test (not on this host)"
    assert "not on this host" not in err
    assert out == f"llem/pytorch:test: {DIGEST}\n"


def test_a_worker_stopped_by_ctrl_c_names_resume_dir(tmp_path: Path, study_file: Path) -> None:
    planned = make_loop(tmp_path, study_file, FakeRunner())
    planned.preflight()
    study_dir = planned.prepare()
    planned.release()

    def stopped(run_dir: Path, request: RunRequest) -> Any:
        raise KeyboardInterrupt

    worker = make_loop(tmp_path, study_file, FakeRunner(default=stopped))  # a Slurm task, a --parallel slot
    worker.attach(study_dir)
    with pytest.raises(Interrupted) as caught:
        worker.execute(worker="slurm-7_0")
    assert str(caught.value) == (
        f"interrupted; completed results are kept in {study_dir} (--resume-dir {study_dir} continues)"
    )
    assert ManifestStore.load(study_dir).run("e001-c1").status == "interrupted"


def test_parallel_workers_stopped_by_ctrl_c_name_resume_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llem import manifest, parallel

    def interrupted(study_dir: Path, slots: Any, command: Any, progress: Any) -> list[int]:
        raise KeyboardInterrupt

    statuses: list[str] = []
    store = SimpleNamespace(set_status=statuses.append)
    monkeypatch.setattr(parallel, "run_workers", interrupted)
    monkeypatch.setattr(manifest.ManifestStore, "attach", lambda study_dir: store)
    loop: Any = SimpleNamespace(release=lambda: None)
    with pytest.raises(Interrupted) as caught:
        executors.Parallel([], "llem", [], print, lambda d, t: None).follow(loop, tmp_path)
    assert str(caught.value) == (
        f"interrupted; completed results are kept in {tmp_path} (--resume-dir {tmp_path} continues)"
    )
    assert statuses == ["interrupted"]
