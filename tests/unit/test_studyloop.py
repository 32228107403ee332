"""The study runner against a fake runner: manifest truth, failure kinds, interruption."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from llem.claims import ClaimBoard
from llem.container import ContainerSpec
from llem.errors import ConfigError, EnvironmentProblem, Interrupted
from llem.execution import HostSettings
from llem.locks import DeviceLocks
from llem.manifest import Manifest, ManifestStore
from llem.models import resolve_model_dir
from llem.plan import make_plan
from llem.runner import ContainerOutcome
from llem.study import load_study
from llem.studydir import newest_unfinished
from llem.studyloop import StudyLoop
from llem_agent.contract import RunError, RunRequest
from tests.factories import make_result

Behaviour = Callable[[Path, RunRequest], ContainerOutcome]


def ok(run_dir: Path, req: RunRequest) -> ContainerOutcome:
    (run_dir / "result.json").write_text(make_result(req.run_id, req.config_hash).model_dump_json())
    return ContainerOutcome(0, False, False, 0.1)


def agent_error(run_dir: Path, req: RunRequest) -> ContainerOutcome:
    err = RunError(run_id=req.run_id, type="ValueError", message="boom", phase="load", traceback="tb")
    (run_dir / "error.json").write_text(err.model_dump_json())
    return ContainerOutcome(1, False, False, 0.1)


class FakeRunner:
    kind = "docker"

    def agent_path(self, mount):
        return mount.target

    def __init__(self, behaviours: dict[str, Behaviour] | None = None, default: Behaviour = ok) -> None:
        self.behaviours = behaviours or {}
        self.default = default
        self.specs: list[ContainerSpec] = []
        self.missing_images: set[str] = set()
        self.lock_dir: Path | None = None

    def check(self, images: Iterable[str]) -> None:
        for image in images:
            if image in self.missing_images:
                raise EnvironmentProblem(f"image {image} not found")

    def describe(self, images: Iterable[str]):
        return {"version": "fake"}, {image: {"id": "sha256:fake"} for image in images}

    def run(self, spec: ContainerSpec, timeout_s: float, log_path: Path, liveness=None) -> ContainerOutcome:
        self.specs.append(spec)
        run_dir = next(m.source for m in spec.mounts if m.target == "/llem/run")
        request = RunRequest.model_validate_json((run_dir / "experiment.json").read_text())
        if self.lock_dir is not None:  # the run's lock is held while its container runs
            assert not DeviceLocks(["cpu"], self.lock_dir).try_acquire()
        log_path.write_text("log line\n")
        return self.behaviours.get(request.run_id, self.default)(run_dir, request)


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []

    def run_started(self, run, position, total):
        self.events.append(f"start {run.run_id}")

    def run_finished(self, outcome):
        self.events.append(f"end {outcome.run.run_id} {outcome.entry.status}")

    def waiting_for_devices(self, names):
        self.events.append("wait")

    def pausing(self, seconds):
        self.events.append(f"gap {seconds}")

    def run_phase(self, run, phase, detail):
        self.events.append(f"phase {run.run_id} {phase}")

    def note(self, text):
        self.events.append(f"note {text}")


def make_loop(tmp_path: Path, study_file: Path, runner: FakeRunner) -> StudyLoop:
    plan = make_plan(load_study(study_file), order="interleave")
    options = HostSettings(
        results_root=tmp_path / "results",
        images={"pytorch": "llem/pytorch:test"},
        run_timeout_s=10,
        gpu_indices=(),
        lock_dir=tmp_path / "locks",
        lock_wait_s=1,
        hf_home=tmp_path / "hf",
    )
    runner.lock_dir = options.lock_dir
    return StudyLoop(plan, options, runner, Recorder())


def run_study(tmp_path: Path, study_file: Path, runner: FakeRunner, **options: object) -> tuple[StudyLoop, Manifest]:
    """Run a whole study through ``runner``; return the runner and the final manifest."""
    loop = make_loop(tmp_path, study_file, runner)
    loop.options = dataclasses.replace(loop.options, **options)  # type: ignore[arg-type]
    loop.preflight()
    study_dir = loop.prepare()
    loop.execute()
    return loop, ManifestStore.load(study_dir)


def test_every_run_gets_a_container_and_the_manifest_ends_completed(tmp_path, study_file):
    runner = FakeRunner()
    loop = make_loop(tmp_path, study_file, runner)
    loop.preflight()
    study_dir = loop.prepare()
    assert ManifestStore.load(study_dir).status == "running"
    outcomes = loop.execute()
    manifest = ManifestStore.load(study_dir)
    assert manifest.status == "completed"
    assert [r.status for r in manifest.runs] == ["completed"] * 4
    assert len(outcomes) == len(runner.specs) == 4
    assert (study_dir / "study.yaml").read_text() == study_file.read_text()
    host = json.loads((study_dir / "host.json").read_text())
    assert host["images"] == {"llem/pytorch:test": {"id": "sha256:fake"}}
    assert host["cpu_count"] >= 1
    for run in manifest.runs:
        run_dir = study_dir / "runs" / run.run_id
        assert {"experiment.json", "result.json", "container.log"} <= {p.name for p in run_dir.iterdir()}
    assert all(s.network_disabled for s in runner.specs)  # the model is local
    request = json.loads((study_dir / "runs" / "e001-c1" / "experiment.json").read_text())
    assert request["sample_interval_s"] == 0.1
    assert DeviceLocks(["cpu"], tmp_path / "locks").try_acquire()  # nothing left locked


def test_failures_are_classified_and_the_study_goes_on(tmp_path, study_file):
    runner = FakeRunner(
        {
            "e001-c1": agent_error,
            "e002-c1": lambda d, r: ContainerOutcome(None, True, False, 10.0),
            "e001-c2": lambda d, r: ContainerOutcome(137, False, True, 1.0),
        }
    )
    _, manifest = run_study(tmp_path, study_file, runner)
    kinds = {r.run_id: (r.status, r.failure.kind if r.failure else None) for r in manifest.runs}
    assert kinds == {
        "e001-c1": ("failed", "agent_error"),
        "e002-c1": ("failed", "timeout"),
        "e001-c2": ("failed", "oom"),
        "e002-c2": ("completed", None),
    }
    assert manifest.run("e001-c1").failure.message == "load: boom"
    assert manifest.status == "failed"


def test_corrupt_and_missing_results(tmp_path, study_file):
    def corrupt(d: Path, r: RunRequest) -> ContainerOutcome:
        (d / "result.json").write_text("{not json")
        return ContainerOutcome(0, False, False, 0.1)

    runner = FakeRunner({"e001-c1": corrupt, "e002-c1": lambda d, r: ContainerOutcome(0, False, False, 0.1)})
    _, manifest = run_study(tmp_path, study_file, runner)
    assert manifest.run("e001-c1").failure.kind == "corrupt_result"
    assert manifest.run("e002-c1").failure.kind == "no_result"


def test_ctrl_c_marks_the_running_run_interrupted_and_keeps_completed_ones(tmp_path, study_file):
    def interrupt(d: Path, r: RunRequest) -> ContainerOutcome:
        raise KeyboardInterrupt

    loop = make_loop(tmp_path, study_file, FakeRunner({"e001-c2": interrupt}))
    loop.preflight()
    study_dir = loop.prepare()
    with pytest.raises(Interrupted):
        loop.execute()
    manifest = ManifestStore.load(study_dir)
    assert manifest.status == "interrupted"
    statuses = {r.run_id: r.status for r in manifest.runs}
    assert statuses == {"e001-c1": "completed", "e002-c1": "completed", "e001-c2": "interrupted", "e002-c2": "pending"}
    assert json.loads((study_dir / "runs" / "e001-c1" / "result.json").read_text())["run_id"] == "e001-c1"
    assert DeviceLocks(["cpu"], tmp_path / "locks").try_acquire()


def test_missing_image_fails_in_preflight_before_any_results_directory(tmp_path, study_file):
    runner = FakeRunner()
    runner.missing_images = {"llem/pytorch:test"}
    loop = make_loop(tmp_path, study_file, runner)
    with pytest.raises(EnvironmentProblem, match="not found"):
        loop.preflight()
    assert not (tmp_path / "results").exists()


def test_resolve_model_dir(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert resolve_model_dir("./m", tmp_path) == (tmp_path / "m").resolve()
    assert resolve_model_dir("m", tmp_path) == (tmp_path / "m").resolve()
    assert resolve_model_dir("openai-community/gpt2", tmp_path) is None
    with pytest.raises(Exception, match="model directory not found"):
        resolve_model_dir("./missing", tmp_path)


def test_settings_the_agent_would_ignore_are_refused_before_anything_runs(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    study = tmp_path / "s.yaml"
    study.write_text("model: ./model\npytorch:\n  num_processes: 2\n")
    loop = make_loop(tmp_path, study, FakeRunner())
    with pytest.raises(ConfigError, match=r"does not apply pytorch\.num_processes; remove it"):
        loop.preflight()
    assert not (tmp_path / "results").exists()


def fail(d: Path, r: RunRequest) -> ContainerOutcome:
    return agent_error(d, r)


def test_resume_runs_everything_but_completed_runs_and_keeps_earlier_attempts(tmp_path, study_file):
    first = make_loop(tmp_path, study_file, FakeRunner({"e001-c1": fail, "e002-c2": fail}))
    first.preflight()
    study_dir = first.prepare()
    first.execute()
    assert ManifestStore.load(study_dir).status == "failed"

    runner = FakeRunner()
    second = make_loop(tmp_path, study_file, runner)
    second.preflight()
    assert second.resume(study_dir) == study_dir
    outcomes = second.execute()
    assert sorted(s.labels["llem.run"] for s in runner.specs) == ["e001-c1", "e002-c2"]
    manifest = ManifestStore.load(study_dir)
    assert manifest.status == "completed"
    assert [h["status"] for h in manifest.history] == ["running", "failed", "running", "completed"]
    assert manifest.run("e001-c1").attempts == 2
    assert manifest.run("e002-c1").attempts == 1
    assert (study_dir / "runs" / "e001-c1" / "attempts" / "1" / "error.json").exists()
    assert all(o.result is not None for o in outcomes)


def test_resume_refuses_a_changed_design(tmp_path, study_file):
    loop = make_loop(tmp_path, study_file, FakeRunner())
    loop.preflight()
    study_dir = loop.prepare()
    loop.execute()
    study_file.write_text(study_file.read_text().replace("[1, 2]", "[1, 3]"))
    changed = make_loop(tmp_path, study_file, FakeRunner())
    with pytest.raises(ConfigError, match="design changed since it ran"):
        changed.resume(study_dir)


def test_topping_up_cycles_keeps_the_study_and_adds_runs(tmp_path, study_file):
    loop = make_loop(tmp_path, study_file, FakeRunner())
    loop.preflight()
    study_dir = loop.prepare()
    loop.execute()
    plan = make_plan(load_study(study_file), n_cycles=3, order="interleave")
    runner = FakeRunner()
    more = StudyLoop(plan, loop.options, runner, Recorder())
    more.resume(study_dir)
    more.execute()
    assert sorted(s.labels["llem.run"] for s in runner.specs) == ["e001-c3", "e002-c3"]
    assert len(ManifestStore.load(study_dir).runs) == 6


def test_fail_fast_stops_and_marks_the_rest_skipped_and_the_status_stays(tmp_path, study_file):
    _, manifest = run_study(tmp_path, study_file, FakeRunner(default=fail), max_consecutive_failures=1)
    assert manifest.status == "circuit_open"
    assert [r.status for r in manifest.runs] == ["failed", "skipped", "skipped", "skipped"]
    assert {r.failure.kind for r in manifest.runs[1:]} == {"circuit_open"}


def test_breaker_probe_after_cooldown_resumes_normal_execution(tmp_path, study_file):
    runner = FakeRunner({"e001-c1": fail, "e002-c1": fail})
    loop, manifest = run_study(
        tmp_path, study_file, runner, max_consecutive_failures=2, circuit_breaker_cooldown_s=0.01
    )
    assert [r.status for r in manifest.runs] == ["failed", "failed", "completed", "completed"]
    assert "gap 0.01" in loop.events.events


def test_wall_clock_limit_skips_the_remaining_runs(tmp_path, study_file):
    def slow(d: Path, r: RunRequest) -> ContainerOutcome:
        time.sleep(0.2)
        return ok(d, r)

    _, manifest = run_study(tmp_path, study_file, FakeRunner(default=slow), wall_clock_limit_s=0.3)
    assert manifest.status == "timed_out"
    assert [r.status for r in manifest.runs] == ["completed", "completed", "skipped", "skipped"]


def test_newest_unfinished_and_a_locked_study_directory(tmp_path, study_file):
    loop = make_loop(tmp_path, study_file, FakeRunner({"e001-c1": fail}))
    loop.preflight()
    study_dir = loop.prepare()
    with pytest.raises(EnvironmentProblem, match="being run by another llem process"):
        make_loop(tmp_path, study_file, FakeRunner()).resume(study_dir)
    loop.execute()
    assert newest_unfinished(tmp_path / "results", "t") == study_dir
    with pytest.raises(ConfigError, match="no unfinished study named 'other'"):
        newest_unfinished(tmp_path / "results", "other")


def test_model_files_must_be_readable_by_the_unprivileged_agent(tmp_path):
    from llem.models import check_readable_by_agent

    (tmp_path / "m").mkdir()
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_text("x")
    weights.chmod(0o600)
    check_readable_by_agent(tmp_path / "m", host_uid=1000)  # the agent is the host user: fine
    with pytest.raises(ConfigError, match=r"readable only by its owner \(mode 600\)"):
        check_readable_by_agent(tmp_path / "m", host_uid=0)
    weights.chmod(0o644)
    check_readable_by_agent(tmp_path / "m", host_uid=0)


def test_phase_watch_reports_phases_batches_and_downloads(tmp_path: Path):
    import json as _json

    from llem.onerun import PhaseWatch

    class Events:
        def __init__(self) -> None:
            self.seen: list[tuple[str, str]] = []

        def run_phase(self, run, phase, detail):
            self.seen.append((phase, detail))

    heartbeat, cache = tmp_path / "heartbeat", tmp_path / "models--org--m"
    cache.mkdir()
    events = Events()
    watch = PhaseWatch(object(), heartbeat, cache, events)  # type: ignore[arg-type]
    watch.poll()  # no heartbeat yet: nothing to say
    for phase, progress in [("load", 0), ("load", 0), ("warmup", 2), ("measure", 2), ("measure", 5)]:
        if phase == "load" and events.seen:
            (cache / "blob").write_bytes(b"x" * 3 * 2**20)
        heartbeat.write_text(_json.dumps({"phase": phase, "progress": progress, "at": 0}))
        watch.poll()
    assert events.seen == [
        ("load", ""),
        ("load", "3.0 MiB downloaded"),
        ("warmup", ""),
        ("measure", ""),
        ("measure", "3 batches"),
    ]


@pytest.mark.parametrize(("extras", "refused"), [("", True), ("zeus", True), ("zeus,codecarbon", False), (None, False)])
def test_energy_sampler_extra_is_checked_against_the_image_label(tmp_path, extras, refused):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    study = tmp_path / "s.yaml"
    study.write_text("model: ./model\nenergy_sampler: codecarbon\n")

    class Labelled(FakeRunner):
        def describe(self, images):
            labels = {} if extras is None else {"io.llem.agent-extras": extras}  # None: an image without the label
            return {"version": "fake"}, {image: {"id": "sha256:fake", "labels": labels} for image in images}

    loop = make_loop(tmp_path, study, Labelled())
    if refused:
        with pytest.raises(ConfigError, match=r"needs an image built with --build-arg AGENT_EXTRAS=codecarbon"):
            loop.preflight()
    else:
        loop.preflight()


def _worker(tmp_path: Path, study_file: Path, study_dir: Path, runner: FakeRunner, **options: object) -> StudyLoop:
    loop = make_loop(tmp_path, study_file, runner)
    loop.options = dataclasses.replace(loop.options, **options)  # type: ignore[arg-type]
    runner.lock_dir = loop.options.lock_dir
    loop.attach(study_dir)
    return loop


def _planned(tmp_path: Path, study_file: Path) -> Path:
    loop = make_loop(tmp_path, study_file, FakeRunner())
    loop.preflight()
    study_dir = loop.prepare()
    loop.release()
    return study_dir


def _hold(study_dir: str, run_id: str, held: Any, die: Any) -> None:
    """Another worker: claims ``run_id``, marks it running, then is killed (-9) while it runs it."""
    board = ClaimBoard(Path(study_dir), worker="other", stale_after_s=3600)
    assert board.claim(run_id) is not None
    store = ManifestStore(Path(study_dir), ManifestStore.load(Path(study_dir)))
    store.update_run(run_id, status="running", attempts=1)
    held.set()
    die.wait(60)
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_waits_for_a_run_another_holds_and_takes_it_when_that_worker_dies(tmp_path, study_file):
    study_dir = _planned(tmp_path, study_file)
    ctx = multiprocessing.get_context("fork")
    held, die = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold, args=(str(study_dir), "e001-c1", held, die))
    other.start()
    assert held.wait(30)

    class KillsTheOther(Recorder):
        def note(self, text):
            super().note(text)
            if "waiting for 1 run(s) other workers hold: e001-c1 held by other@" in text:
                die.set()  # the worker holding e001-c1 dies while this one waits for it
                other.join(30)

    runner = FakeRunner()
    worker = _worker(tmp_path, study_file, study_dir, runner, claim_stale_s=3600)
    worker.events = KillsTheOther()
    worker.execute(worker="w")
    other.join(30)
    manifest = ManifestStore.load(study_dir)
    assert [r.status for r in manifest.runs] == ["completed"] * 4
    assert manifest.run("e001-c1").attempts == 2
    assert sorted(s.labels["llem.run"] for s in runner.specs) == sorted(r.run_id for r in manifest.runs)
    assert manifest.status == "completed"
    assert manifest.history[-1]["detail"] == "4 of 4 runs completed"


def test_deleting_claims_mid_run_keeps_its_result_and_nobody_else_runs_it(tmp_path, study_file):
    study_dir = _planned(tmp_path, study_file)
    second = FakeRunner()
    other = _worker(tmp_path, study_file, study_dir, second, claim_stale_s=60, lock_dir=None)  # runs side by side
    waiting = threading.Event()

    class Says(Recorder):
        def note(self, text):
            super().note(text)
            if "e001-c1 held by" in text:
                waiting.set()

    other.events = Says()
    thread = threading.Thread(target=other.execute, kwargs={"worker": "other"})

    def deleted_midway(run_dir: Path, req: RunRequest) -> ContainerOutcome:
        (run_dir / "heartbeat").write_text("{}")  # the agent beats
        shutil.rmtree(study_dir / "claims")  # by hand, while the run measures
        thread.start()  # another worker looks at the study now
        assert waiting.wait(30), "the other worker never said that e001-c1 is held"
        return ok(run_dir, req)

    runner = FakeRunner({"e001-c1": deleted_midway})
    first = _worker(tmp_path, study_file, study_dir, runner, claim_stale_s=60, lock_dir=None)
    first.execute(worker="first")
    thread.join(30)
    manifest = ManifestStore.load(study_dir)
    assert manifest.run("e001-c1").status == "completed" and manifest.run("e001-c1").attempts == 1
    assert "e001-c1" not in [s.labels["llem.run"] for s in second.specs]
    assert manifest.status == "completed"


def test_an_empty_claim_left_by_a_killed_writer_does_not_block_its_run(tmp_path, study_file):
    study_dir = _planned(tmp_path, study_file)
    (study_dir / "claims").mkdir()
    empty = study_dir / "claims" / "e002-c1"
    empty.write_bytes(b"")
    old = time.time() - 30
    os.utime(empty, (old, old))
    worker = _worker(tmp_path, study_file, study_dir, FakeRunner(), claim_stale_s=3600)
    started = time.monotonic()
    worker.execute(worker="w")
    assert time.monotonic() - started < 30
    assert ManifestStore.load(study_dir).status == "completed"


def test_a_claim_lost_while_queued_for_devices_never_starts_its_container(tmp_path, study_file):
    study_dir = _planned(tmp_path, study_file)
    runner = FakeRunner()
    worker = _worker(tmp_path, study_file, study_dir, runner, lock_wait_s=30)
    busy = DeviceLocks(["cpu"], tmp_path / "locks")
    assert busy.try_acquire()

    class TakenOver(Recorder):
        def waiting_for_devices(self, names):
            super().waiting_for_devices(names)
            if not (study_dir / "claims" / "e001-c2").exists():  # queued for e001-c1: frozen past the stale period
                (study_dir / "claims" / "e001-c1").write_text("new@elsewhere:1:abc\n")
            busy.release()

    worker.events = TakenOver()
    worker.execute(worker="w")
    assert "e001-c1" not in [s.labels["llem.run"] for s in runner.specs]
    assert any("e001-c1: claimed by another worker before its container started" in e for e in worker.events.events)
    assert (study_dir / "claims" / "e001-c1").read_text() == "new@elsewhere:1:abc\n"  # the new owner's claim stands
    manifest = ManifestStore.load(study_dir)
    assert [manifest.run(r).status for r in ("e002-c1", "e001-c2", "e002-c2")] == ["completed"] * 3
    # Nothing of the lost run was written once its devices were locked: not its manifest entry
    # (the new owner's to keep), not its experiment.json.
    assert (manifest.run("e001-c1").status, manifest.run("e001-c1").attempts) == ("pending", 0)
    assert not (study_dir / "runs" / "e001-c1" / "experiment.json").exists()
    assert manifest.status == "running"  # the new owner concludes the study


def test_resume_refuses_a_reordered_sweep_and_another_image_for_completed_runs(tmp_path, study_file):
    loop = make_loop(tmp_path, study_file, FakeRunner({"e002-c2": fail}))
    loop.preflight()
    study_dir = loop.prepare()
    loop.execute()
    # Swapped experiments: e001 would resume as batch size 2 into batch size 1's results. The design
    # hash sees the order today; the run's own config hash is checked too (a manifest whose runs say
    # other configs than the plan makes, as one planned by an llem whose design hash was order-blind).
    reordered = tmp_path / "reordered.yaml"
    reordered.write_text(study_file.read_text().replace("[1, 2]", "[2, 1]"))
    with pytest.raises(ConfigError, match="design changed"):
        make_loop(tmp_path, reordered, FakeRunner()).resume(study_dir)
    saved = (study_dir / "manifest.json").read_text()
    store = ManifestStore(study_dir, ManifestStore.load(study_dir))
    first, second = store.manifest.run("e001-c1").config_hash, store.manifest.run("e002-c1").config_hash
    store.update_runs({"e001-c1": {"config_hash": second}, "e002-c1": {"config_hash": first}})
    with pytest.raises(ConfigError, match=rf"run e001-c1 was planned as config {second}, this study makes it {first}"):
        make_loop(tmp_path, study_file, FakeRunner()).resume(study_dir)
    (study_dir / "manifest.json").write_text(saved)
    # Another image: completed runs' numbers would sit beside another image's.
    other = make_loop(tmp_path, study_file, FakeRunner())
    other.options = dataclasses.replace(other.options, images={"pytorch": "llem/pytorch:other"})
    said = r"completed pytorch runs ran in llem/pytorch:test \(docker\); this resume would run llem/pytorch:other"
    with pytest.raises(ConfigError, match=said + r" \(docker\): resume with --image pytorch=llem/pytorch:test"):
        other.resume(study_dir)
    # The same image resumes, and the run still to run records what it ran in.
    same = make_loop(tmp_path, study_file, FakeRunner())
    same.resume(study_dir)
    same.execute()
    manifest = ManifestStore.load(study_dir)
    assert manifest.status == "completed" and manifest.run("e002-c2").image == "llem/pytorch:test"


def test_a_run_records_the_image_its_attempt_ran_in(tmp_path, study_file):
    loop = make_loop(tmp_path, study_file, FakeRunner({"e001-c1": fail}))
    loop.preflight()
    study_dir = loop.prepare()
    loop.execute()
    # The failed run is resumed with another image: only runs still to run may change image.
    completed = ManifestStore.load(study_dir)
    store = ManifestStore(study_dir, completed)
    store.update_runs({r.run_id: {"status": "failed"} for r in completed.runs})  # nothing completed
    again = make_loop(tmp_path, study_file, FakeRunner())
    again.options = dataclasses.replace(again.options, images={"pytorch": "llem/pytorch:other"})
    again.resume(study_dir)
    again.execute()
    assert {r.image for r in ManifestStore.load(study_dir).runs} == {"llem/pytorch:other"}  # was: the planned image


def test_workers_run_the_study_directorys_copy_not_the_live_file(tmp_path, study_file):
    from llem.study import load_planned_study

    loop = make_loop(tmp_path, study_file, FakeRunner())
    loop.preflight()
    study_dir = loop.prepare()
    loop.release()
    # Edited after submission: the same design, another runner (was: the workers ran it).
    study_file.write_text(study_file.read_text() + "runners: {pytorch: local}\n")
    assert load_study(study_file).runners == {"pytorch": "local"}
    manifest = ManifestStore.load(study_dir)
    planned = load_planned_study(study_dir, manifest.study_file, manifest.study_name)
    assert planned.runners == {} and planned.design_hash == manifest.study_design_hash
    assert planned.path == study_file  # relative paths (./model) still resolve where the file is
    # A resume from the edited file makes it what the workers run, keeping the earlier copy.
    resumed = make_loop(tmp_path, study_file, FakeRunner())
    resumed.resume(study_dir)
    resumed.release()
    assert load_planned_study(study_dir, manifest.study_file).runners == {"pytorch": "local"}
    assert len(list(study_dir.glob("study.yaml.before-*"))) == 1


def test_host_json_keeps_the_planning_host_and_adds_each_resumes(tmp_path, study_file):
    loop = make_loop(tmp_path, study_file, FakeRunner({"e001-c1": fail}))
    loop.preflight()
    study_dir = loop.prepare()
    loop.execute()
    planned = json.loads((study_dir / "host.json").read_text())
    again = make_loop(tmp_path, study_file, FakeRunner())
    again.resume(study_dir)
    again.release()
    facts = json.loads((study_dir / "host.json").read_text())
    assert {k: v for k, v in facts.items() if k != "resumed"} == planned  # the planning host stays
    (resumed,) = facts["resumed"]  # was: host.json never said a resume ran, or where
    assert resumed["hostname"] == planned["hostname"] and "at" in resumed
