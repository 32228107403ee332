"""Counts in llem's messages agree with their number (issue 23, item 15): ``1 run is held``,
``2 runs are held``; never ``1 runs``. Each message is tried with one and with two."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from llem import executors, slurm
from llem.claims import ClaimBoard
from llem.errors import ConfigError
from llem.plan import make_plan
from llem.results import _refuse_mixed
from llem.slurm import SlurmOptions
from llem.study import load_study
from llem.studydir import final_status
from llem.words import be, plural


@pytest.fixture
def one_run(tmp_path: Path, study_file: Path) -> Path:
    """A study of one experiment and one cycle: one run (beside study_file's model)."""
    path = tmp_path / "one.yaml"
    path.write_text("name: one\nmodel: ./model\nstudy_execution: {n_cycles: 1}\n")
    return path


def test_plural_and_its_verb() -> None:
    assert [plural(n, "run") for n in (0, 1, 2, 1000)] == ["0 runs", "1 run", "2 runs", "1,000 runs"]
    assert [be(n) for n in (0, 1, 2)] == ["are", "is", "are"]
    assert [be(n, past=True) for n in (0, 1, 2)] == ["were", "was", "were"]


def test_the_slurm_script_header_counts_runs_and_tasks(tmp_path: Path, study_file: Path, one_run: Path) -> None:
    options = SlurmOptions(gpus=0)
    one = slurm.script(tmp_path, make_plan(load_study(one_run)), options, [], pending=1).splitlines()
    assert one[1].endswith("study one, 1 run (1 to run) by a job") and one[2].startswith("# array of 1 task. ")
    two = slurm.script(tmp_path, make_plan(load_study(study_file)), options, [], pending=2).splitlines()
    assert two[1].endswith("study t, 4 runs (2 to run) by a job") and two[2].startswith("# array of 2 tasks. ")


def _held(monkeypatch: pytest.MonkeyPatch, run_ids: list[str]) -> None:
    monkeypatch.setattr(ClaimBoard, "live_claims", lambda self: {r: f"slurm-7_{i}" for i, r in enumerate(run_ids)})


@pytest.mark.parametrize(
    ("held", "said"),
    [
        (["e001-c1"], "1 run is held by workers of another llem (e001-c1 by slurm-7_0)"),
        (["e001-c1", "e002-c1"],
         "2 runs are held by workers of another llem (e001-c1 by slurm-7_0; e002-c1 by slurm-7_1)"),
    ],
)  # fmt: skip
def test_runs_another_llem_holds_when_parallel_workers_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: list[str], said: str
) -> None:
    lines: list[str] = []
    monkeypatch.setattr(executors, "open_study", lambda options, loop: tmp_path)
    _held(monkeypatch, held)
    slot = SimpleNamespace(describe=lambda: "cpu0")
    loop: Any = SimpleNamespace(plan=SimpleNamespace(study=SimpleNamespace(name="t"), runs=[1]))
    executors.Parallel([slot], "llem", [], lines.append, lambda done, total: None).submit(loop, None)  # type: ignore[arg-type, list-item]
    assert lines[0] == f"study t: 1 run, 1 at a time (cpu0) -> {tmp_path}"
    assert lines[1] == said + "; this study's workers wait for them"


@pytest.mark.parametrize(
    ("held", "said"),
    [
        (["e001-c1"], "1 run is still held by other workers (e001-c1); they finish the study"),
        (["e001-c1", "e002-c1"], "2 runs are still held by other workers (e001-c1, e002-c1); they finish the study"),
    ],
)
def test_runs_other_workers_still_hold_when_parallel_workers_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: list[str], said: str
) -> None:
    from llem import manifest, parallel

    lines: list[str] = []
    monkeypatch.setattr(parallel, "run_workers", lambda study_dir, slots, command, progress: [0])
    monkeypatch.setattr(parallel, "record_overlaps", lambda study_dir: 0)
    monkeypatch.setattr(manifest.ManifestStore, "attach", lambda study_dir: SimpleNamespace(refresh=lambda: None))
    _held(monkeypatch, held)
    loop: Any = SimpleNamespace(release=lambda: None)
    followed = executors.Parallel([], "llem", [], lines.append, lambda d, t: None).follow(loop, tmp_path)
    assert followed.status is None and lines == [said]


@pytest.mark.parametrize(("left", "said"), [(1, "1 run not completed"), (2, "2 runs not completed")])
def test_runs_a_slurm_job_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, left: int, said: str) -> None:
    monkeypatch.setattr(slurm, "follow", lambda study_dir, job, progress: ("failed", left))
    executor = executors.Slurm(SlurmOptions(), [], True, print, lambda d, t: None)
    executor.job = "7"
    assert executor.follow(SimpleNamespace(), tmp_path) == executors.Followed("failed", said)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fake", "real", "said"),
    [
        (["e001-c1"], ["e002-c1"], "1 run on simulated GPUs (e001-c1) and 1 on real GPUs or the CPU (e002-c1);"),
        (["e001-c1", "e001-c2"], ["e002-c1", "e002-c2"],
         "2 runs on simulated GPUs (e001-c1, ...) and 2 on real GPUs or the CPU (e002-c1, ...);"),
    ],
)  # fmt: skip
def test_a_study_mixing_simulated_and_real_runs(tmp_path: Path, fake: list[str], real: list[str], said: str) -> None:
    with pytest.raises(ConfigError) as refused:
        _refuse_mixed(tmp_path, {True: fake, False: real})
    assert str(refused.value) == f"{tmp_path}: {said} llem never compares a simulated number with a measurement"


def test_the_final_status_counts_a_study_of_one_run() -> None:
    assert final_status(["completed"]) is not None
    assert final_status(["completed"]).detail == "1 of 1 run completed"  # type: ignore[union-attr]
    assert final_status(["failed"]).detail == "0 of 1 run completed; 1 failed"  # type: ignore[union-attr]
    assert final_status(["completed", "failed"]).detail == "1 of 2 runs completed; 1 failed"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("n_cycles", "said"), [(1, "0 of 1 run completed, 1 to run"), (2, "1 of 2 runs completed, 1 to run")]
)
def test_the_resume_line(tmp_path: Path, one_run: Path, n_cycles: int, said: str) -> None:
    from llem.cli import _Progress

    plan = make_plan(load_study(one_run), n_cycles=n_cycles)
    out = io.StringIO()
    progress = _Progress(Console(file=out, width=200))
    with progress:
        progress.study_started(plan, tmp_path, n_cycles - 1, resumed=True)
    assert out.getvalue().splitlines()[0] == f"resuming study one in {tmp_path}: {said}"
