"""The execution protocol (issue 22 s1.5, s1.6, s1.8): --profile quick|publication, this machine's
thermal pauses from the user config, and the whole protocol recorded with the study."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llem.errors import ConfigError
from llem.execution import HostSettings
from llem.manifest import ManifestStore
from llem.options import Options
from llem.plan import make_plan
from llem.profiles import PROFILES
from llem.session import host_settings, load_plan
from llem.study import StudyExecution, load_planned_study, load_study
from llem.studyloop import StudyLoop
from llem.userconfig import load_user_config
from tests.unit.test_studyloop import FakeRunner, Recorder

SILENT = "name: p\nmodel: ./model\nsweep:\n  pytorch.batch_size: [1, 2]\n"


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "config.json").write_text("{}")
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def test_quick_sets_the_execution_and_fills_what_the_experiments_leave_unset(tmp_path):
    path = write(tmp_path, SILENT + "warmup: {n_warmup: 3}\nstudy_execution: {n_cycles: 4, config_gap_seconds: 9}\n")
    study = load_study(path, profile="quick")
    # study_execution: the profile's, over the study's (4 cycles, 9 s) -- how the collection runs.
    assert study.execution.n_cycles == 1 and study.execution.experiment_order == "sequential"
    assert (study.execution.config_gap_seconds, study.execution.cycle_gap_seconds) == (0.0, 0.0)
    for exp in study.experiments:
        assert exp.config.warmup.n_warmup == 3  # the study said 3: it stays
        assert exp.config.warmup.thermal_floor_seconds == 30.0  # unset there: the profile's
        assert exp.config.baseline.strategy == "cached"
    plain = load_study(path)
    assert [e.config.warmup.thermal_floor_seconds for e in plain.experiments] == [60.0, 60.0]  # the default
    assert plain.design_hash != study.design_hash  # what each experiment is changed: a different design
    assert study.profile == "quick" and plain.profile is None


def test_a_swept_field_beats_the_profile_and_explicit_flags_beat_it_too(tmp_path):
    path = write(tmp_path, SILENT.replace("[1, 2]\n", "[1, 2]\n  baseline.strategy: [validated, fresh]\n"))
    study, plan = load_plan(path, Options(profile="publication", cycles=2, order="sequential"))
    assert sorted({e.config.baseline.strategy for e in study.experiments}) == ["fresh", "validated"]
    assert all(e.config.warmup.convergence_detection for e in study.experiments)  # filled by publication
    assert study.execution.n_cycles == 5 and study.execution.experiment_order == "latin_square"
    assert (plan.n_cycles, plan.order) == (2, "sequential")  # --cycles 2 --order sequential win


def test_an_unknown_profile_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^unknown profile 'slow' \(one of quick, publication\)$"):
        load_study(write(tmp_path, SILENT), profile="slow")


def test_each_profile_says_what_it_sets():
    line = PROFILES["quick"].describe()
    assert line.startswith("profile quick (a first look: one cycle, no pauses): n_cycles 1, ")
    assert "where experiments are silent: warmup.n_warmup 1, warmup.thermal_floor_seconds 30.0" in line


def test_gaps_are_this_machines_between_gpu_runs_and_none_on_cpu(tmp_path, monkeypatch):
    path = write(tmp_path, SILENT)
    study = load_study(path)
    assert study.execution.config_gap_seconds is None  # silent: the machine decides
    user = load_user_config()
    assert user.gaps_s(gpus=True) == (60.0, 300.0)  # 002's defaults
    assert user.gaps_s(gpus=False) == (0.0, 0.0)
    config = tmp_path / "config.yaml"
    config.write_text("study_execution: {config_gap_seconds: 15, cycle_gap_seconds: 120}\n")
    monkeypatch.setenv("LLEM_CONFIG", str(config))
    user = load_user_config()
    assert user.gaps_s(gpus=True) == (15.0, 120.0)
    assert user.settings["study_execution.cycle_gap_seconds"].source == f"user config {config}"
    cpu = host_settings(Options(), study, user)  # this host has no GPU
    assert (cpu.config_gap_s, cpu.cycle_gap_s) == (0.0, 0.0)
    monkeypatch.setattr("llem.devices.allowed_gpus", lambda spec: ((0,), {0: "GPU-0"}))
    gpu = host_settings(Options(), study, user)
    assert (gpu.config_gap_s, gpu.cycle_gap_s) == (15.0, 120.0)
    explicit = load_study(write(tmp_path, SILENT + "study_execution: {config_gap_seconds: 2}\n"))
    assert host_settings(Options(), explicit, user).gaps_s(explicit.execution) == (2.0, 120.0)  # the study's wins


def test_a_bad_gap_in_the_user_config_is_one_line(tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    config.write_text("study_execution: {config_gap_seconds: -1}\n")
    monkeypatch.setenv("LLEM_CONFIG", str(config))
    with pytest.raises(ConfigError, match=r"study_execution.config_gap_seconds: Input should be greater than"):
        load_user_config()


def test_runner_pauses_are_the_resolved_ones(tmp_path):
    path = write(tmp_path, SILENT + "study_execution: {n_cycles: 2, experiment_order: interleave}\n")
    study = load_study(path)
    options = HostSettings(results_root=tmp_path / "r", images={"pytorch": "x"}, run_timeout_s=10,
                            gpu_indices=(), lock_dir=None, lock_wait_s=1, hf_home=tmp_path / "hf",
                            config_gap_s=0.01, cycle_gap_s=0.02)  # fmt: skip
    events = Recorder()
    loop = StudyLoop(make_plan(study), options, FakeRunner(), events)
    loop.preflight()
    loop.prepare()
    loop.execute()
    gaps = [e for e in events.events if e.startswith("gap")]
    # e001-c1 e002-c1 | e001-c2 e002-c2: a run gap, a cycle gap, a run gap.
    assert gaps == ["gap 0.01", "gap 0.02", "gap 0.01"]


def test_the_whole_protocol_is_recorded_and_workers_reapply_the_profile(tmp_path):
    path = write(tmp_path, SILENT)
    options = Options(profile="quick", run_timeout_s=100.0, failures="fail_fast", timeout_hours=2.0)
    study, plan = load_plan(path, options)
    host = dataclasses.replace(host_settings(options, study, load_user_config()), results_root=tmp_path / "r")
    loop = StudyLoop(plan, host, FakeRunner(), Recorder())
    loop.preflight()
    study_dir = loop.prepare()
    loop.release()
    manifest = ManifestStore.load(study_dir)
    assert manifest.protocol == {
        "profile": "quick",
        "n_cycles": 1,
        "experiment_order": "sequential",
        "shuffle_seed": plan.seed,
        "config_gap_seconds": 0.0,
        "cycle_gap_seconds": 0.0,
        "max_consecutive_failures": 1,  # --fail-fast
        "circuit_breaker_cooldown_seconds": 60.0,
        "wall_clock_timeout_hours": 2.0,
        "run_timeout_seconds": 100.0,
        "stall_timeout_seconds": 600.0,
        "sample_interval_seconds": 0.1,
    }
    # A worker loads the copy (which has no profile in it) and applies the recorded one again.
    again = load_planned_study(study_dir, manifest.study_file, manifest.study_name, profile="quick")
    assert again.design_hash == manifest.study_design_hash
    assert load_planned_study(study_dir, manifest.study_file, manifest.study_name).design_hash != again.design_hash
    # A resume without the profile is refused, and told which one it was planned with.
    _, plain_plan = load_plan(path, Options())
    other = StudyLoop(plain_plan, host, FakeRunner(), Recorder())
    with pytest.raises(ConfigError, match=r"design changed .* \(it was planned with --profile quick\)"):
        other.resume(study_dir)


def test_old_manifests_without_a_protocol_still_load(tmp_path):
    path = write(tmp_path, SILENT)
    loop = StudyLoop(make_plan(load_study(path)), HostSettings(
        results_root=tmp_path / "r", images={"pytorch": "x"}, run_timeout_s=10, gpu_indices=(), lock_dir=None,
        lock_wait_s=1, hf_home=tmp_path / "hf"), FakeRunner(), Recorder())  # fmt: skip
    loop.preflight()
    study_dir = loop.prepare()
    loop.release()
    data = json.loads((study_dir / "manifest.json").read_text())
    del data["protocol"]
    (study_dir / "manifest.json").write_text(json.dumps(data))
    assert ManifestStore.load(study_dir).protocol is None


def test_study_execution_gaps_stay_strict():
    with pytest.raises(ValueError, match="config_gap_seconds"):
        StudyExecution.model_validate({"config_gap_seconds": True})


def test_python_dash_m_llem_runs_the_command():
    """``python -m llem`` (and, in a checkout, ``python -m orchestrator``) is the llem command."""
    proc = subprocess.run([sys.executable, "-m", "llem", "--version"], capture_output=True, text=True, check=False)
    assert (proc.returncode, proc.stdout.strip()) == (0, "llem 0.1.0")


def test_output_dir_is_where_the_study_directory_goes(tmp_path):
    """003's output_dir: applied (it was accepted, then refused before any run), anchored at the
    study file, --results-dir over it, never part of what an experiment is."""
    from llem.session import results_root
    from llem_agent.contract import config_hash

    path = write(tmp_path, SILENT + "output_dir: ./elsewhere\n")
    study = load_study(path)
    assert study.output_dir == tmp_path / "elsewhere"
    assert results_root(Options(), study, load_user_config()) == tmp_path / "elsewhere"
    assert results_root(Options(results_dir=tmp_path / "flag"), study, load_user_config()) == tmp_path / "flag"
    plain = load_study(write(tmp_path, SILENT))
    assert [e.config_hash for e in study.experiments] == [e.config_hash for e in plain.experiments]
    assert study.design_hash == plain.design_hash
    assert config_hash(study.experiments[0].config) == plain.experiments[0].config_hash
    host = host_settings(Options(), study, load_user_config())
    loop = StudyLoop(make_plan(study), host, FakeRunner(), Recorder())
    loop.preflight()  # no longer refused as a field the agent does not apply
    assert loop.prepare().parent == tmp_path / "elsewhere"
    loop.release()


def test_two_output_dirs_in_one_study_are_refused(tmp_path):
    path = write(tmp_path, SILENT.replace("[1, 2]\n", "[1, 2]\n  output_dir: [a, b]\n"))
    with pytest.raises(ConfigError, match=r"experiments name 2 output_dir values \(a, b\); a study writes one"):
        load_study(path)


def test_a_skipped_grid_point_is_named_by_its_values_and_recorded_so(tmp_path):
    text = "name: g\nmodel: ./model\nsweep:\n  engine: [pytorch, tensorrt]\n  dtype: [float32, bfloat16]\n"
    study = load_study(write(tmp_path, text))
    (skipped,) = study.skipped
    assert skipped.point == "engine=tensorrt, dtype=float32"  # 002's example
    assert skipped.describe().startswith("grid point 3 (engine=tensorrt, dtype=float32): tensorrt does not support")
    loop = StudyLoop(make_plan(study), HostSettings(
        results_root=tmp_path / "r", images={"pytorch": "x", "tensorrt": "y"}, run_timeout_s=10, gpu_indices=(),
        lock_dir=None, lock_wait_s=1, hf_home=tmp_path / "hf"), FakeRunner(), Recorder())  # fmt: skip
    study_dir = loop.prepare()
    loop.release()
    (entry,) = ManifestStore.load(study_dir).skipped
    assert (entry.index, entry.point) == (2, "engine=tensorrt, dtype=float32")


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("backend: pytorch\nmodel: m\n", "unknown key 'backend' (an earlier name: 003 calls it engine)"),
        ("precision: bf16\nmodel: m\n", "unknown key 'precision' (an earlier name: 003 calls it dtype"),
        ("n: 100\nmodel: m\n", "unknown key 'n' (an earlier name: 003 calls it dataset.n_prompts)"),
        ("model: m\nstudy_execution: {cycle_order: interleaved}\n", "003 calls it experiment_order"),
        ("model: m\nexecution: {n_cycles: 2}\n", "unknown key 'execution' (an earlier name: 003 calls it study_ex"),
    ],
)
def test_names_of_the_earlier_designs_say_what_003_calls_them(tmp_path, text, hint):
    with pytest.raises(ConfigError, match=re.escape(hint)):
        load_study(write(tmp_path, text))


def test_a_static_cache_with_batches_is_warned_about(tmp_path):
    text = SILENT + "pytorch: {cache_implementation: static}\n"
    study = load_study(write(tmp_path, text))
    # batch_size 1 needs no padding; batch_size 2 does (004, "Pitfall 6").
    assert study.warnings == (
        "experiment 2: pytorch.cache_implementation static with batch_size 2: a static cache pads every batch to "
        "one length (004); prompts of different lengths add padding, which costs time and energy but counts as "
        "no token",
    )
    assert load_study(write(tmp_path, SILENT)).warnings == ()
