"""What is recorded is what ran (issue 23, item 7): each attempt records the id (and a registry
digest) of the image its container ran, and a resume refuses completed runs whose tag names
another image by now (rebuilt or pulled since)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker.errors
import pytest

from llem.container import ContainerSpec
from llem.docker_runner import DockerRunner
from llem.errors import ConfigError
from llem.manifest import ManifestStore
from llem.runner import ContainerOutcome
from tests.unit.test_docker_runner_signals import FakeClient, FakeDaemon, spec
from tests.unit.test_studyloop import FakeRunner, fail, make_loop

OLD = "sha256:" + "a" * 64
NEW = "sha256:" + "b" * 64


class ImagedDaemon(FakeDaemon):
    """Containers that say which image they were created from, as the daemon's inspect does."""

    def create(self, image: str, **kwargs: Any) -> Any:
        made = super().create(image, **kwargs)
        made.attrs["Image"] = OLD
        return made


class Images:
    def __init__(self, digests: dict[str, list[str]]) -> None:
        self.digests = digests

    def get(self, ref: str) -> Any:
        if ref not in self.digests:
            raise docker.errors.ImageNotFound(ref)
        return SimpleNamespace(id=ref, attrs={"RepoDigests": self.digests[ref]})


def _run(tmp_path: Path, digests: dict[str, list[str]]) -> ContainerOutcome:
    client = FakeClient(ImagedDaemon())
    client.images = Images(digests)  # type: ignore[attr-defined]
    runner = DockerRunner(client_factory=lambda: client)  # type: ignore[arg-type, return-value]
    return runner.run(spec(tmp_path), 10, tmp_path / "container.log")


def test_the_docker_runner_says_the_id_and_digest_of_the_image_its_container_ran(tmp_path: Path) -> None:
    # Two repositories tag the image: the digest of the run's own (llem/pytorch) is the one said.
    theirs, ours = "mirror.example/pytorch@sha256:" + "c" * 64, "llem/pytorch@sha256:" + "d" * 64
    outcome = _run(tmp_path, {OLD: [theirs, ours]})
    assert (outcome.exit_code, outcome.image_id, outcome.image_digest) == (0, OLD, ours)
    # Built here, never pushed: an id, no digest. Removed while it ran: its id still is what ran.
    assert (_run(tmp_path, {OLD: []}).image_id, _run(tmp_path, {OLD: []}).image_digest) == (OLD, None)
    assert (_run(tmp_path, {}).image_id, _run(tmp_path, {}).image_digest) == (OLD, None)


class ImageRunner(FakeRunner):
    """A fake Docker whose tag names ``image_id``: its runs say so, as the docker runner's do."""

    def __init__(self, image_id: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image_id = image_id

    def describe(self, images: Iterable[str]) -> Any:
        return {"version": "fake"}, {image: {"id": self.image_id} for image in images}

    def run(self, spec: ContainerSpec, timeout_s: float, log_path: Path, liveness: Any = None) -> ContainerOutcome:
        outcome = super().run(spec, timeout_s, log_path, liveness)
        digest = None if self.image_id is None else "llem/pytorch@" + self.image_id
        return dataclasses.replace(outcome, image_id=self.image_id, image_digest=digest)


def _first_run(tmp_path: Path, study_file: Path) -> Path:
    loop = make_loop(tmp_path, study_file, ImageRunner(OLD, behaviours={"e002-c2": fail}))
    loop.preflight()
    study_dir = loop.prepare()
    loop.execute()
    return study_dir


def test_each_attempt_records_the_image_id_and_digest_it_ran_in(tmp_path: Path, study_file: Path) -> None:
    study_dir = _first_run(tmp_path, study_file)
    entries = ManifestStore.load(study_dir).runs
    assert {(e.image, e.image_id, e.image_digest) for e in entries} == {
        ("llem/pytorch:test", OLD, "llem/pytorch@" + OLD)
    }  # the failed attempt too
    # The failed run, resumed once the tag names a rebuilt image, records the new one.
    store = ManifestStore(study_dir, ManifestStore.load(study_dir))
    store.update_runs({e.run_id: {"status": "failed"} for e in entries})  # nothing completed: nothing refused
    again = make_loop(tmp_path, study_file, ImageRunner(NEW))
    again.resume(study_dir)
    again.execute()
    assert {e.image_id for e in ManifestStore.load(study_dir).runs} == {NEW}


def test_a_resume_refuses_completed_runs_whose_tag_names_another_image_now(tmp_path: Path, study_file: Path) -> None:
    study_dir = _first_run(tmp_path, study_file)
    saved = (study_dir / "manifest.json").read_text()
    rebuilt = make_loop(tmp_path, study_file, ImageRunner(NEW))
    with pytest.raises(ConfigError) as refused:
        rebuilt.resume(study_dir)
    said = str(refused.value)
    assert "\n" not in said
    assert f"completed pytorch runs ran in llem/pytorch:test as image {OLD}; that tag names {NEW} on this host" in said
    assert f"(docker tag {OLD} llem/pytorch:test) and resume, or run the study anew" in said
    assert (study_dir / "manifest.json").read_text() == saved  # refused before anything changed
    # The same image (tag and id) resumes: only the failed run runs, in that image.
    runner = ImageRunner(OLD)
    same = make_loop(tmp_path, study_file, runner)
    same.resume(study_dir)
    same.execute()
    assert [s.labels["llem.run"] for s in runner.specs] == ["e002-c2"]
    assert ManifestStore.load(study_dir).status == "completed"


def test_an_id_that_one_side_does_not_know_is_not_compared(tmp_path: Path, study_file: Path) -> None:
    # This host cannot say the tag's id (runs elsewhere, no Docker here): the tag alone is checked.
    study_dir = _first_run(tmp_path, study_file)
    unknown = make_loop(tmp_path, study_file, ImageRunner(None))
    unknown.resume(study_dir)
    unknown.release()
    # A manifest of an llem that recorded no id (no image_id, no image_digest) still loads and resumes.
    raw = json.loads((study_dir / "manifest.json").read_text())
    for entry in raw["runs"]:
        del entry["image_id"], entry["image_digest"]
    (study_dir / "manifest.json").write_text(json.dumps(raw))
    assert ManifestStore.load(study_dir).run("e001-c1").image_id is None
    runner = ImageRunner(NEW)
    old = make_loop(tmp_path, study_file, runner)
    old.resume(study_dir)
    old.execute()
    assert [s.labels["llem.run"] for s in runner.specs] == ["e002-c2"]
    assert ManifestStore.load(study_dir).run("e002-c2").image_id == NEW
