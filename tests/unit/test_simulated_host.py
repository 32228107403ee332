"""Simulated GPUs on the host: the spec, the NVML seam, the container spec, locks, host.json and
the labels of llem results and the report (a study never mixes simulated with real runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llem.container import build_spec
from llem.devices import allowed_gpus, nvml_gpus, read_nvml
from llem.errors import ConfigError
from llem.locks import lock_names
from llem.simulation import SIMULATE_ENV, parse_spec, simulated_gpus
from llem_agent.contract import CONTAINER_SIMULATION_FILE, RESULT_FILE
from llem_agent.contract.simulation import SIMULATED_DEVICES_ENV, simulated_uuid
from tests.synthetic import make_study_dir

SIM0, SIM1 = simulated_uuid(0), simulated_uuid(1)


def test_the_spec_is_a_number_then_settings_and_faults():
    two = parse_spec("2")
    assert [d.uuid for d in two.devices] == [SIM0, SIM1] == ["GPU-SIM-00000000-0000-0000-0000-000000000000", SIM1]
    assert {d.name for d in two.devices} == {"llem simulated GPU (H100-like)"}
    assert two.profile.power_reading == "average_1s" and two.faults == []
    one = parse_spec(
        "1, reading=instant, step=0.02, idle=60, loaded=95, load=400, fault=sampling_gap:2@1, "
        "fault=unsupported:energy, fault=counter_bias:0.1, fault=device_lost@3"
    )
    p = one.profile
    assert (p.power_reading, p.counter_step_s, p.idle_w, p.loaded_idle_w, p.load_w) == ("instant", 0.02, 60, 95, 400)
    gap, unsupported, bias, lost = one.faults
    assert (gap.kind, gap.duration_s, gap.at_s) == ("sampling_gap", 2.0, 1.0)
    assert (unsupported.kind, unsupported.field) == ("unsupported", "energy")
    assert (bias.kind, bias.amount, lost.kind, lost.at_s) == ("counter_bias", 0.1, "device_lost", 3.0)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("0", "number of GPUs"),
        ("two", "number of GPUs"),
        ("65", "number of GPUs"),
        ("1,volts=3", "unknown setting 'volts'"),
        ("1,idle", "KEY=VALUE"),
        ("1,idle=hot", "'hot' is not a number"),
        ("1,reading=sometimes", "power_reading"),
        ("1,fault=meltdown", "kind"),
        ("1,fault=unsupported", "names its field"),
        ("1,fault=throttling:3", "takes no argument"),
        ("1,step=0.5", "counter_step_s"),
    ],
)
def test_a_spec_that_describes_no_simulation_is_refused_in_one_line(spec: str, says: str):
    with pytest.raises(ConfigError, match=says) as caught:
        parse_spec(spec)
    assert "\n" not in str(caught.value) and spec in str(caught.value)


def test_nothing_is_simulated_unless_asked(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(SIMULATE_ENV, raising=False)
    assert simulated_gpus() is None
    assert simulated_gpus({SIMULATE_ENV: " "}) is None
    assert simulated_gpus({SIMULATE_ENV: "1"}) is not None


def test_the_hosts_nvml_seam_lists_the_simulated_gpus(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(SIMULATE_ENV, "2")
    view = read_nvml()
    assert [(g.index, g.uuid, g.simulated, g.mig) for g in view.gpus] == [
        (0, SIM0, True, False),
        (1, SIM1, True, False),
    ]
    assert view.gpus[0].memory_gb == pytest.approx(85.52, abs=0.01)  # 81559 MiB, an H100's
    assert nvml_gpus() == (list(view.gpus), None)
    # Which GPUs a study may use: as for real ones, --gpus and CUDA_VISIBLE_DEVICES (index or UUID).
    assert allowed_gpus(None, {}) == ((0, 1), {0: SIM0, 1: SIM1})
    assert allowed_gpus("1", {}) == ((1,), {1: SIM1})
    assert allowed_gpus(None, {"CUDA_VISIBLE_DEVICES": SIM1}) == ((1,), {1: SIM1})
    assert allowed_gpus(None, {"CUDA_VISIBLE_DEVICES": ""}) == ((), {})
    with pytest.raises(Exception, match="there is no GPU 2 here"):
        allowed_gpus("2", {})


def spec_for(tmp_path: Path, simulated: bool, engine: str = "pytorch", gpus: tuple[int, ...] = (1,)):
    run_dir = tmp_path / "study" / "runs" / "e001-c1"
    run_dir.mkdir(parents=True, exist_ok=True)
    return build_spec(
        image="llem/pytorch:test",
        study_id="study",
        run_id="e001-c1",
        run_dir=run_dir,
        hf_home=tmp_path / "hf",
        model_dir=None,
        gpu_indices=gpus,
        host_uid=1000,
        host_gid=1000,
        host_pid=1,
        engine=engine,
        gpu_uuids=tuple(simulated_uuid(g) if simulated else f"GPU-real-{g}" for g in gpus),
        simulation_file=tmp_path / "study" / "simulated-gpus.json" if simulated else None,
    )


def test_a_run_on_simulated_gpus_gets_no_nvidia_device_but_its_description(tmp_path: Path):
    spec = spec_for(tmp_path, simulated=True)
    assert spec.simulated and spec.gpu_ids == ()  # no device request: nothing of the NVIDIA runtime
    mount = spec.mount_at(CONTAINER_SIMULATION_FILE)
    assert mount is not None and mount.read_only and mount.source.name == "simulated-gpus.json"
    env = spec.container_environment or {}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"  # not one real GPU, even where nvidia is the default runtime
    assert env[SIMULATED_DEVICES_ENV] == env["CUDA_VISIBLE_DEVICES"] == SIM1  # its GPU, by UUID
    assert spec.gpu_uuids == (SIM1,)
    vllm = spec_for(tmp_path, simulated=True, engine="vllm", gpus=(0, 1))
    assert ("memlock", -1, -1) not in vllm.ulimits and vllm.shm_size == "16g"  # its engine pins no GPU memory


def test_a_real_gpu_run_is_as_it_was(tmp_path: Path):
    spec = spec_for(tmp_path, simulated=False)
    assert not spec.simulated and spec.gpu_ids == ("GPU-real-1",)
    assert spec.mount_at(CONTAINER_SIMULATION_FILE) is None
    env = spec.container_environment or {}
    assert (
        "NVIDIA_VISIBLE_DEVICES" not in env and SIMULATED_DEVICES_ENV not in env and "CUDA_VISIBLE_DEVICES" not in env
    )
    assert ("memlock", -1, -1) in spec_for(tmp_path, simulated=False, engine="vllm", gpus=(0, 1)).ulimits


def test_the_local_runner_gives_the_agent_the_hosts_description(tmp_path: Path):
    from llem.local_runner import LocalRunner

    spec = spec_for(tmp_path, simulated=True)
    runner = LocalRunner("pytorch")
    mount = spec.mount_at(CONTAINER_SIMULATION_FILE)
    assert mount is not None and runner.agent_path(mount) == str(tmp_path / "study" / "simulated-gpus.json")
    env = runner.environment(spec)
    assert env["CUDA_VISIBLE_DEVICES"] == SIM1  # no real GPU for its engine
    assert SIMULATED_DEVICES_ENV not in env  # on the host NVML sees every GPU, the simulated one too


def test_simulated_gpus_have_locks_of_their_own():
    assert lock_names([1, 0], simulated=True) == ["gpu-sim0", "gpu-sim1"]
    assert lock_names([1, 0]) == ["gpu0", "gpu1"]  # a real study's locks are not theirs


def test_host_json_says_the_gpus_were_simulated(monkeypatch: pytest.MonkeyPatch):
    from llem.hostinfo import host_facts

    monkeypatch.setenv(SIMULATE_ENV, "1")
    facts = host_facts({}, {})
    assert facts["gpus_simulated"] is True
    assert facts["gpus"] == [{"index": 0, "name": "llem simulated GPU (H100-like)", "uuid": SIM0, "simulated": True}]


def simulate(study_dir: Path, run_dirs: list[Path]) -> None:
    for run_dir in run_dirs:
        path = run_dir / RESULT_FILE
        data = json.loads(path.read_text())
        data["environment"]["gpus_simulated"] = True
        path.write_text(json.dumps(data))


def completed_runs(study_dir: Path) -> list[Path]:
    return sorted(p for p in (study_dir / "runs").iterdir() if (p / RESULT_FILE).exists())


def test_results_and_the_report_say_the_gpus_were_simulated(tmp_path: Path):
    from rich.console import Console

    from llem.display import print_results
    from llem.report import render
    from llem.results import summarise

    study_dir = make_study_dir(tmp_path, batch_sizes=(1, 2), dtypes=("bfloat16",), n_cycles=2, failed_runs=0)
    simulate(study_dir, completed_runs(study_dir))
    summary = summarise(study_dir)
    assert summary.gpus_simulated and all(r.gpus_simulated for r in summary.runs)
    assert json.loads((study_dir / "summary.json").read_text())["gpus_simulated"] is True
    runs_csv = (study_dir / "runs.csv").read_text().splitlines()
    assert (
        "gpus_simulated" in runs_csv[0].split(",")
        and runs_csv[1].split(",")[runs_csv[0].split(",").index("gpus_simulated")] == "True"
    )
    console = Console(record=True, width=200)
    print_results(summary, console)
    text = console.export_text()
    assert text.startswith("SIMULATED GPUs (--simulate-gpus)") and "on SIMULATED GPUs" in text
    html = render(summary)
    assert "llem report: synthetic (SIMULATED GPUs)" in html and 'class="simulated"' in html


def test_a_real_study_is_labelled_as_before(tmp_path: Path):
    from llem.results import summarise

    study_dir = make_study_dir(tmp_path, batch_sizes=(1,), dtypes=("bfloat16",), n_cycles=2, failed_runs=0)
    summary = summarise(study_dir)
    assert not summary.gpus_simulated
    assert "gpus_simulated" not in (study_dir / "runs.csv").read_text().splitlines()[0]


def test_a_study_mixing_simulated_and_real_runs_is_refused(tmp_path: Path):
    from llem.results import aggregate

    study_dir = make_study_dir(tmp_path, batch_sizes=(1, 2), dtypes=("bfloat16",), n_cycles=2, failed_runs=0)
    runs = completed_runs(study_dir)
    simulate(study_dir, runs[:1])
    said = r"1 run on simulated GPUs \(e\d+-c\d+\) and 3 on real GPUs or the CPU \(e\d+-c\d+, \.\.\.\)"
    with pytest.raises(ConfigError, match=said) as caught:
        aggregate(study_dir)
    assert "never compares a simulated number with a measurement" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_command_line_flag_sets_the_variable_every_worker_reads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from llem.cli import main

    monkeypatch.setenv(SIMULATE_ENV, "placeholder")  # restored after the test: main sets it for the process
    monkeypatch.chdir(tmp_path)
    assert main(["run", "no-such-study.yaml", "--simulate-gpus", "0"]) != 0  # refused before anything runs
    assert main(["run", "no-such-study.yaml", "--simulate-gpus", "2,reading=instant"]) != 0  # no study file
    import os

    assert os.environ[SIMULATE_ENV] == "2,reading=instant"


def test_each_run_on_a_simulated_gpu_is_given_its_description_and_its_own_lock(tmp_path: Path, study_file: Path):
    from llem.locks import DeviceLocks
    from llem.manifest import ManifestStore
    from llem_agent.contract import RunRequest
    from tests.unit.test_studyloop import FakeRunner, ok, run_study

    requests: list[RunRequest] = []
    locks = tmp_path / "locks"

    def simulated_ok(run_dir: Path, request: RunRequest):
        requests.append(request)
        assert not DeviceLocks(["gpu-sim0"], locks).try_acquire()  # its simulated GPU's lock is held ...
        free = DeviceLocks(["gpu0", "cpu"], locks)
        assert free.try_acquire()  # ... and neither a real GPU's nor the CPU's
        free.release()
        return ok(run_dir, request)

    class Simulated(FakeRunner):
        lock_dir = property(lambda self: None, lambda self, value: None)  # its own lock check is the CPU's

    runner = Simulated(default=simulated_ok)
    simulation = parse_spec("2,reading=instant")
    loop, manifest = run_study(
        tmp_path, study_file, runner, gpu_indices=(0, 1), gpu_uuids={0: SIM0, 1: SIM1}, simulation=simulation
    )
    study_dir = loop.study_dir
    assert study_dir is not None
    written = (study_dir / "simulated-gpus.json").read_text()
    assert json.loads(written) == simulation.model_dump(mode="json")
    for spec in runner.specs:
        assert spec.simulated and spec.gpu_ids == () and spec.gpu_uuids == (SIM0,)
        mount = spec.mount_at(CONTAINER_SIMULATION_FILE)
        assert mount is not None and mount.read_only and mount.source == (study_dir / "simulated-gpus.json").resolve()
    assert {r.simulated_gpus for r in requests} == {CONTAINER_SIMULATION_FILE}
    assert {tuple(r.gpu_uuids or ()) for r in requests} == {(SIM0,)}
    assert {tuple(e.devices) for e in ManifestStore.load(study_dir).runs} == {("gpu-sim0",)}
    assert manifest.status == "completed"


def test_doctor_says_the_gpus_are_simulated_and_needs_no_nvidia_runtime(monkeypatch: pytest.MonkeyPatch, tmp_path):
    from llem import doctor
    from llem.docker_runner import DockerRunner

    monkeypatch.setenv(SIMULATE_ENV, "2")
    monkeypatch.setenv("LLEM_CONFIG", str(tmp_path / "absent.yaml"))
    monkeypatch.setattr(DockerRunner, "server", lambda self: ({"Version": "27"}, {"Runtimes": {"runc": {}}}))
    monkeypatch.setattr(DockerRunner, "image_problem", lambda self, image: None)
    checks = {c.name: c for c in doctor.run_checks(results_dir=tmp_path)}
    gpus = checks["GPUs (SIMULATED: LLEM_SIMULATE_GPUS)"]
    assert gpus.status == "ok" and "llem simulated GPU (H100-like)" in gpus.detail
    assert checks["NVIDIA container runtime"].status == "warn"  # not a failure: simulated runs get no NVIDIA device
