"""The study directory's one owner: its layout, the one manifest reader, the one result reader,
creating and resuming it, and the one rule for a study's final status."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from llem.errors import ConfigError, EnvironmentProblem
from llem.manifest import Manifest, ManifestStore, RunEntry
from llem.studydir import (
    FINAL_STATUSES,
    StudyDir,
    final_status,
    newest_study,
    newest_unfinished,
    read_json,
    study_dirs,
)
from tests.factories import make_result


def _manifest(name: str = "s", status: str = "running", runs: tuple[str, ...] = ("completed", "failed")) -> Manifest:
    entries = [RunEntry(run_id=f"e{i + 1:03d}-c1", experiment_index=i, cycle=1, config_hash="x", image="i", status=s)
               for i, s in enumerate(runs)]  # fmt: skip
    return Manifest(study_name=name, study_id=name, study_design_hash="h", llem_version="0", n_cycles=1,
                    experiment_order="sequential", shuffle_seed=None, runs=entries, status=status)  # fmt: skip


def _study(tmp_path: Path, **kwargs: object) -> StudyDir:
    study = StudyDir(tmp_path / "s_20260101T000000Z")
    study.path.mkdir()
    ManifestStore(study.path, _manifest(**kwargs)).publish()  # type: ignore[arg-type]
    return study


# --- the layout ------------------------------------------------------------------------------


def test_the_layout_is_the_one_every_executor_shares(tmp_path: Path):
    study = StudyDir(tmp_path)
    run = study.run("e001-c1")
    named = {
        study.manifest_file: "manifest.json",
        study.manifest_lock: ".manifest.lock",
        study.lock_file: ".lock",
        study.study_copy: "study.yaml",
        study.earlier_copy("20260101T000000Z"): "study.yaml.before-20260101T000000Z",
        study.host_file: "host.json",
        study.design_file: "experiments.json",
        study.runs_dir: "runs",
        run.path: "runs/e001-c1",
        run.request_file: "runs/e001-c1/experiment.json",
        run.result_file: "runs/e001-c1/result.json",
        run.error_file: "runs/e001-c1/error.json",
        run.log_file: "runs/e001-c1/container.log",
        run.heartbeat_file: "runs/e001-c1/heartbeat",
        run.telemetry_file: "runs/e001-c1/timeseries.parquet",
        run.trace_file: "runs/e001-c1/nvml-trace.json",
        run.metrics_cache: "runs/e001-c1/.metrics-cache.json",
        run.attempt(2): "runs/e001-c1/attempts/2",
        study.claims_dir: "claims",
        study.claim_file("e001-c1"): "claims/e001-c1",
        study.workers_dir: "workers",
        study.worker_log(3): "workers/slot3.log",
        study.slurm_dir: "slurm",
        study.slurm_script: "slurm/job.sbatch",
        study.report_file: "report.html",
    }
    for path, relative in named.items():
        assert path == tmp_path / relative
    names = [p.name for p in study.summary_files]
    assert names == ["summary.json", "summary.csv", "summary.parquet", "runs.csv", "runs.parquet"]
    assert run.run_id == "e001-c1"
    assert {"running"}.isdisjoint(FINAL_STATUSES) and "completed" in FINAL_STATUSES


# --- the one manifest reader -------------------------------------------------------------------


def test_the_manifest_and_the_digest_of_its_bytes(tmp_path: Path):
    study = _study(tmp_path)
    manifest, digest = study.manifest_and_digest()
    assert manifest.study_name == "s" and [r.status for r in manifest.runs] == ["completed", "failed"]
    assert digest == hashlib.sha256(study.manifest_file.read_bytes()).hexdigest()
    assert study.is_study() and study.manifest() == manifest == ManifestStore.load(study.path)
    assert ManifestStore.attach(study.path).manifest == manifest


def test_a_missing_manifest_is_not_a_study_directory(tmp_path: Path):
    study = StudyDir(tmp_path)
    with pytest.raises(ConfigError, match=r"is not a llem study directory \(no manifest.json\)$"):
        study.manifest()
    assert not study.is_study()
    assert study.manifest_if_present() is None and study.poll_manifest() is None


@pytest.mark.parametrize("text", ["{this is not json", '{"study_name": 3}', "\xff\xfe", ""])
def test_a_damaged_manifest_is_one_plain_line_saying_where_the_results_are(tmp_path: Path, text: str):
    study = StudyDir(tmp_path)
    study.manifest_file.write_bytes(text.encode("latin-1"))
    for read in (study.manifest, study.manifest_if_present, lambda: ManifestStore.load(tmp_path)):
        with pytest.raises(ConfigError) as caught:
            read()
        message = str(caught.value)
        assert message == (
            f"{study.manifest_file} is damaged (not a manifest llem can read); each completed run's result.json "
            f"is still under {tmp_path}/runs"
        )
    assert study.poll_manifest() is None  # a follower waits for a readable one


def test_an_unreadable_manifest_says_why_and_never_waits_on_a_fifo(tmp_path: Path):
    study = StudyDir(tmp_path / "fifo")
    study.path.mkdir()
    os.mkfifo(study.manifest_file)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"manifest.json: cannot read it \(a FIFO, not a regular file\)$"):
        study.manifest()
    assert time.monotonic() - started < 5
    folder = StudyDir(tmp_path / "folder")
    folder.manifest_file.mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"cannot read it \(a directory\)$"):
        folder.manifest()


def test_study_dirs_skip_what_cannot_be_read_and_the_newest_is_found(tmp_path: Path):
    for name, status in (("a_1", "completed"), ("a_2", "failed"), ("b_1", "running")):
        (tmp_path / name).mkdir()
        manifest = _manifest(name="a" if name.startswith("a") else "b", status=status)
        manifest.created_at = f"2026-01-0{name[-1]}T00:00:00Z"
        ManifestStore(tmp_path / name, manifest).publish()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{")
    assert sorted(p.name for _, p in study_dirs(tmp_path)) == ["a_1", "a_2", "b_1"]
    assert newest_unfinished(tmp_path, "a") == tmp_path / "a_2"
    assert newest_study(tmp_path).name in {"a_2", "b_1"}
    with pytest.raises(ConfigError, match="no unfinished study named 'c'"):
        newest_unfinished(tmp_path, "c")
    with pytest.raises(ConfigError, match="no study directories under"):
        newest_study(tmp_path / "broken")


# --- the one result reader ---------------------------------------------------------------------


def test_the_one_result_reader_says_why_a_result_is_not_usable(tmp_path: Path):
    study = _study(tmp_path)
    run = study.run("e001-c1")
    assert run.read_result() == (None, "result.json is missing")
    run.path.mkdir(parents=True)
    run.result_file.write_text(make_result("e001-c1").model_dump_json())
    result, problem = run.read_result()
    assert problem is None and result is not None and result.run_id == "e001-c1"
    run.result_file.write_text(make_result("e002-c1").model_dump_json())
    assert run.read_result() == (None, "result.json belongs to run e002-c1")
    run.result_file.write_text('{"run_id": "e001-c1"}')
    result, problem = run.read_result()
    assert result is None and problem is not None and problem.startswith("result.json is not a valid result: ")
    run.result_file.unlink()
    os.mkfifo(run.result_file)
    assert run.read_result() == (None, "result.json cannot be read (a FIFO, not a regular file)")


def test_completed_runs_whose_result_is_lost_are_named(tmp_path: Path):
    study = _study(tmp_path, runs=("completed", "completed", "failed"))
    for run_id in ("e001-c1", "e002-c1", "e003-c1"):
        study.run(run_id).path.mkdir(parents=True)
        study.run(run_id).result_file.write_text(make_result(run_id).model_dump_json())
    study.run("e002-c1").result_file.write_text("{trunc")
    manifest = study.manifest()
    assert [run_id for run_id, _ in study.completed_results(manifest)] == ["e001-c1"]  # e003: not completed
    lost = study.lost_results(manifest)
    assert list(lost) == ["e002-c1"] and lost["e002-c1"].startswith("result.json is not a valid result")


def test_the_other_files_read_back(tmp_path: Path):
    study = StudyDir(tmp_path)
    assert study.host() is None and study.design() is None and study.run("x").request_config() is None
    study.host_file.write_text('{"hostname": "h"}')
    study.design_file.write_text("[1, 2]")  # not a mapping: no design
    study.run("x").path.mkdir(parents=True)
    study.run("x").request_file.write_text('{"config": {"model": "m"}}')
    assert study.host() == {"hostname": "h"} and study.design() is None
    assert study.run("x").request_config() == {"model": "m"}
    assert read_json(tmp_path / "nothing.json") is None
    (tmp_path / "big.json").write_text("[" + "1," * 100 + "1]")
    assert read_json(tmp_path / "big.json", limit=64) is None and len(read_json(tmp_path / "big.json")) == 101


# --- creating and resuming ---------------------------------------------------------------------


def test_create_makes_a_new_directory_each_time(tmp_path: Path):
    made = [StudyDir.create(tmp_path / "results", "s") for _ in range(3)]
    assert len({m.path for m in made}) == 3 and all(m.path.is_dir() and m.path.name.startswith("s_") for m in made)
    (tmp_path / "file").write_text("")
    with pytest.raises(EnvironmentProblem, match="cannot create a study directory under"):
        StudyDir.create(tmp_path / "file" / "results", "s")


def test_the_study_copy_is_replaced_only_when_the_file_changed(tmp_path: Path):
    study = StudyDir(tmp_path / "study")
    study.path.mkdir()
    source = tmp_path / "mine.yaml"
    source.write_text("model: a\n")
    study.copy_study_file(source)
    study.copy_study_file(source)
    assert study.study_copy.read_text() == "model: a\n"
    assert [p.name for p in study.path.iterdir()] == ["study.yaml"]
    source.write_text("model: b\n")
    study.copy_study_file(source)
    earlier = [p for p in study.path.iterdir() if p.name.startswith("study.yaml.before-")]
    assert study.study_copy.read_text() == "model: b\n" and [p.read_text() for p in earlier] == ["model: a\n"]


def test_host_json_keeps_the_planning_host_and_gains_each_resume(tmp_path: Path):
    study = StudyDir(tmp_path)
    study.write_host({"hostname": "planner"})
    study.add_resumed_host({"hostname": "second"})
    study.add_resumed_host({"hostname": "third"})
    facts = json.loads(study.host_file.read_text())
    assert facts["hostname"] == "planner" and [h["hostname"] for h in facts["resumed"]] == ["second", "third"]
    StudyDir(tmp_path / "fresh").path.mkdir()
    StudyDir(tmp_path / "fresh").add_resumed_host({"hostname": "h"})  # no host.json yet: one is made
    assert json.loads((tmp_path / "fresh" / "host.json").read_text()) == {"resumed": [{"hostname": "h"}]}


# --- the one rule for the final status -----------------------------------------------------------


@pytest.mark.parametrize(
    ("statuses", "stopped", "held", "expected"),
    [
        (["completed"] * 4, None, (), ("completed", "4 of 4 runs completed")),
        (["completed"] * 3 + ["failed"], None, (), ("failed", "3 of 4 runs completed; 1 failed")),
        (
            ["completed", "skipped", "failed", "skipped"],
            None,
            (),
            ("failed", "1 of 4 runs completed; 1 failed, 2 skipped"),
        ),
        ([], None, (), ("completed", "0 of 0 runs completed")),
        (
            ["completed", "skipped", "running"],
            "circuit_open",
            ("e003-c1",),
            ("circuit_open", "1 of 3 runs completed; 1 running, 1 skipped; 1 held by other workers (e003-c1)"),
        ),
        (["completed", "skipped"], "timed_out", (), ("timed_out", "1 of 2 runs completed; 1 skipped")),
        (["completed", "interrupted"], "interrupted", (), ("interrupted", "1 of 2 runs completed; 1 interrupted")),
        (["completed", "running"], None, ("e002-c1",), None),  # the worker that holds it concludes
        (["interrupted", "running"], "interrupted", ("e002-c1",), None),  # the others go on
    ],
)
def test_the_final_status_and_what_is_left(statuses, stopped, held, expected):
    got = final_status(statuses, stopped, held)
    assert (None if got is None else (got.status, got.detail)) == expected


def test_held_runs_are_named_in_order_and_a_note_ends_the_detail():
    got = final_status(["completed", "running", "running"], "timed_out", {"e3": "w1", "e2": "w2"})
    assert got is not None and got.detail.endswith("; 2 held by other workers (e2, e3)")
    got = final_status(["completed", "failed"], note="no worker concluded")
    assert got is not None and got.detail == "1 of 2 runs completed; 1 failed; no worker concluded"
