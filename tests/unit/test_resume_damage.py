"""--resume after a user or a disk damaged the study directory: never a crash, nothing lost."""

from __future__ import annotations

import pytest

from llem.errors import ConfigError
from llem.manifest import ManifestStore
from tests.helpers import run_llem
from tests.unit.test_studyloop import FakeRunner, make_loop, run_study


@pytest.mark.parametrize("damage", ["delete", "truncate", "other_run"])
def test_a_completed_run_whose_result_is_gone_runs_again_on_resume(tmp_path, study_file, damage):
    loop, _ = run_study(tmp_path, study_file, FakeRunner())
    assert loop.study_dir is not None
    study_dir = loop.study_dir
    victim = study_dir / "runs" / "e002-c1" / "result.json"
    if damage == "delete":
        victim.unlink()
    elif damage == "truncate":
        victim.write_text(victim.read_text()[:40])
    else:
        victim.write_text((study_dir / "runs" / "e001-c1" / "result.json").read_text())
    runner = FakeRunner()
    again = make_loop(tmp_path, study_file, runner)
    again.preflight()
    again.resume(study_dir)
    again.execute()
    assert [s.labels["llem.run"] for s in runner.specs] == ["e002-c1"]  # only the lost one
    after = ManifestStore.load(study_dir)
    assert after.status == "completed" and all(r.status == "completed" for r in after.runs)
    assert after.run("e002-c1").attempts == 2
    lost = [h for h in after.history if h.get("status") == "result_lost"]
    assert len(lost) == 1 and lost[0]["run"] == "e002-c1"
    assert (study_dir / "runs" / "e002-c1" / "attempts" / "1").is_dir()  # the damaged attempt is kept


def test_a_garbage_manifest_is_one_line_that_says_how_to_recover(tmp_path, study_file):
    loop, _ = run_study(tmp_path, study_file, FakeRunner())
    assert loop.study_dir is not None
    (loop.study_dir / "manifest.json").write_text("{this is not json")
    again = make_loop(tmp_path, study_file, FakeRunner())
    with pytest.raises(ConfigError) as caught:
        again.resume(loop.study_dir)
    message = str(caught.value)
    assert "\n" not in message and "damaged" in message and "result.json is still under" in message
    assert "validation error" not in message


@pytest.mark.parametrize("damage", ["{this is not json", '{"study_name": 3}', '{"runs": "none"}'])
def test_the_resume_line_after_a_damaged_manifest_claims_nothing_llem_results_cannot_do(tmp_path, study_file, damage):
    loop, _ = run_study(tmp_path, study_file, FakeRunner())
    assert loop.study_dir is not None
    manifest = loop.study_dir / "manifest.json"
    manifest.write_text(damage)  # not JSON, or JSON that is no manifest (pydantic would say why in many lines)
    with pytest.raises(ConfigError) as caught:
        make_loop(tmp_path, study_file, FakeRunner()).resume(loop.study_dir)
    assert str(caught.value) == (
        f"{manifest} is damaged (not a manifest llem can read); each completed run's result.json is still under "
        f"{loop.study_dir / 'runs'}"
    )  # was: "... run the study anew (llem results reads the old ...)", and llem results cannot read it either
    done = run_llem("results", str(loop.study_dir))
    assert done.returncode == 2 and "is damaged" in done.stderr  # so it must not be told to


def test_results_of_a_study_with_a_lost_result_do_not_crash(tmp_path, study_file):
    from llem.results import summarise

    loop, _ = run_study(tmp_path, study_file, FakeRunner())
    assert loop.study_dir is not None
    (loop.study_dir / "runs" / "e001-c1" / "result.json").unlink()
    (loop.study_dir / "runs" / "e001-c2" / "result.json").write_text("{trunc")
    summary = summarise(loop.study_dir)
    assert summary.experiments[0].stats["output_tokens_per_s"].n == 0


def test_a_damaged_manifest_is_one_plain_line_everywhere(tmp_path):
    study_dir = tmp_path / "s_20260101T000000Z"
    study_dir.mkdir()
    (study_dir / "manifest.json").write_text('{"study_name": 3}')
    for command in (["results", str(study_dir)], ["report", str(study_dir)]):
        done = run_llem(*command)
        assert done.returncode == 2 and "is damaged" in done.stderr, done.stderr
        assert "validation error" not in done.stderr and "Traceback" not in done.stderr  # was: pydantic's text
