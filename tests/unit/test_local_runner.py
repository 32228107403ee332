"""The local runner's runner at its seam: a stand-in interpreter plays the agent, so the
process handling (environment, devices, timeouts, liveness, kill, exit codes) is tested
without an engine. The real agent runs through it in tests/docker/test_local_runner.py."""

from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from llem import local_runner
from llem.container import build_spec
from llem.errors import EnvironmentProblem
from llem.local_runner import LocalRunner
from llem.runner import Liveness
from tests.conftest import REPO

# Stands in for `python -m llem_agent EXPERIMENT`: records what it was given, then acts out
# FAKE_AGENT (ok | hang | crash | sigterm-aware | spawn).
FAKE = """#!/usr/bin/env python3
import json, os, signal, sys, time
run_dir = os.getcwd()
seen = {"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in (
    "CUDA_VISIBLE_DEVICES", "HF_HOME", "HF_HUB_OFFLINE", "CUDA_DEVICE_ORDER", "HOME", "USER", "NVIDIA_VISIBLE_DEVICES",
    "HF_TOKEN")}, "pgid_is_own": os.getpgid(0) == os.getpid()}
open(os.path.join(run_dir, "seen.json"), "w").write(json.dumps(seen))
mode = os.environ.get("FAKE_AGENT", "ok")
if mode == "ok":
    sys.exit(0)
if mode == "crash":
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "sigterm-aware":
    signal.signal(signal.SIGTERM, lambda *a: (open(os.path.join(run_dir, "terminated"), "w").close(), sys.exit(143)))
if mode == "spawn":
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    open(os.path.join(run_dir, "child.pid"), "w").write(str(child.pid))
while True:
    time.sleep(0.05)
"""


@pytest.fixture
def fake_python(tmp_path: Path) -> str:
    path = tmp_path / "fake-python"
    path.write_text(FAKE.replace("#!/usr/bin/env python3", f"#!{sys.executable}"))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def spec_for(tmp_path: Path, gpus: tuple[int, ...] = (), uuids: tuple[str, ...] = (), model: bool = True):
    run_dir = tmp_path / "study" / "runs" / "e001-c1"
    run_dir.mkdir(parents=True, exist_ok=True)
    (tmp_path / "model").mkdir(exist_ok=True)
    return build_spec(
        image="unused", study_id="s", run_id="e001-c1", run_dir=run_dir, hf_home=tmp_path / "hf",
        model_dir=tmp_path / "model" if model else None, gpu_indices=gpus, host_uid=1000, host_gid=1000,
        host_pid=os.getpid(), gpu_uuids=uuids,
    )  # fmt: skip


def seen(tmp_path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((tmp_path / "study" / "runs" / "e001-c1" / "seen.json").read_text())
    return data


def test_paths_become_host_paths_and_gpus_are_named_by_uuid(tmp_path, fake_python, monkeypatch):
    monkeypatch.setenv("FAKE_AGENT", "ok")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    spec = spec_for(tmp_path, gpus=(2,), uuids=("GPU-1234",))
    outcome = LocalRunner("pytorch", python=fake_python).run(spec, 30, tmp_path / "agent.log")
    assert outcome.exit_code == 0 and not outcome.timed_out
    got = seen(tmp_path)
    run_dir = tmp_path / "study" / "runs" / "e001-c1"
    assert got["argv"] == ["-m", "llem_agent", f"{run_dir}/experiment.json"]  # not /llem/run/...
    env = got["env"]
    assert isinstance(env, dict)
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-1234"  # by UUID: CUDA and NVML number GPUs differently
    assert env["HF_HOME"] == str(tmp_path / "hf")
    assert env["HF_HUB_OFFLINE"] == "1" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["HOME"] == os.environ.get("HOME")  # the container-only environment stays out
    assert env["NVIDIA_VISIBLE_DEVICES"] is None and env["HF_TOKEN"] is None
    assert got["pgid_is_own"] is True  # a session of its own: it can be killed as a group


def test_a_cpu_run_sees_no_gpu(tmp_path, fake_python, monkeypatch):
    monkeypatch.setenv("FAKE_AGENT", "ok")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    LocalRunner("pytorch", python=fake_python).run(spec_for(tmp_path), 30, tmp_path / "agent.log")
    env = seen(tmp_path)["env"]
    assert isinstance(env, dict) and env["CUDA_VISIBLE_DEVICES"] == ""


def test_timeout_kills_the_agent(tmp_path, fake_python, monkeypatch):
    monkeypatch.setenv("FAKE_AGENT", "hang")
    start = time.monotonic()
    outcome = LocalRunner("pytorch", python=fake_python).run(spec_for(tmp_path), 1.0, tmp_path / "agent.log")
    assert outcome.timed_out and outcome.exit_code == 128 + signal.SIGKILL
    assert time.monotonic() - start < 10


def test_a_stale_heartbeat_is_a_hang(tmp_path, fake_python, monkeypatch):
    monkeypatch.setenv("FAKE_AGENT", "hang")
    spec = spec_for(tmp_path)
    polls: list[float] = []
    liveness = Liveness(tmp_path / "no-heartbeat", stall_timeout_s=0.5, poll_s=0.1, on_poll=lambda: polls.append(1))
    outcome = LocalRunner("pytorch", python=fake_python).run(spec, 30, tmp_path / "agent.log", liveness)
    assert outcome.hung and not outcome.timed_out
    assert polls  # progress was polled while it ran


def test_an_agent_killed_from_outside_reads_like_a_killed_container(tmp_path, fake_python, monkeypatch):
    monkeypatch.setenv("FAKE_AGENT", "crash")
    outcome = LocalRunner("pytorch", python=fake_python).run(spec_for(tmp_path), 30, tmp_path / "agent.log")
    assert outcome.exit_code == 137 and not outcome.timed_out and not outcome.hung


def test_ctrl_c_stops_the_agent_and_everything_it_started(tmp_path, fake_python, monkeypatch):
    """KeyboardInterrupt while waiting: SIGTERM first (the agent writes error.json), the whole
    session with it, and nothing of the run survives the call."""
    monkeypatch.setenv("FAKE_AGENT", "spawn")
    run_dir = tmp_path / "study" / "runs" / "e001-c1"

    def interrupt() -> None:
        if (run_dir / "child.pid").exists():
            raise KeyboardInterrupt

    liveness = Liveness(tmp_path / "hb", stall_timeout_s=60, poll_s=0.1, on_poll=interrupt)
    with pytest.raises(KeyboardInterrupt):
        LocalRunner("pytorch", python=fake_python).run(spec_for(tmp_path), 30, tmp_path / "agent.log", liveness)
    child = int((run_dir / "child.pid").read_text())
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the agent's child outlived the run")


def test_the_agent_dies_with_llem_even_by_sigkill(tmp_path, fake_python):
    """A host that is SIGKILLed cannot clean up: the kernel ends the agent (PR_SET_PDEATHSIG)."""
    script = (
        "import sys, os\n"
        "from pathlib import Path\n"
        "sys.path.insert(0, sys.argv[3])\n"
        "from tests.unit.test_local_runner import spec_for\n"
        "from llem.local_runner import LocalRunner\n"
        "os.environ['FAKE_AGENT'] = 'hang'\n"
        "LocalRunner('pytorch', python=sys.argv[2]).run(spec_for(Path(sys.argv[1])), 60, Path(sys.argv[1]) / 'log')\n"
    )
    repo = str(Path(__file__).resolve().parents[2])
    host = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), fake_python, repo])
    seen_file = tmp_path / "study" / "runs" / "e001-c1" / "seen.json"
    for _ in range(100):
        if seen_file.exists():
            break
        time.sleep(0.1)
    agents = subprocess.run(["pgrep", "-f", fake_python], capture_output=True, text=True, check=False).stdout.split()
    assert agents, "the stand-in agent never started"
    host.kill()
    host.wait()
    for _ in range(50):
        if not subprocess.run(["pgrep", "-f", fake_python], capture_output=True, text=True, check=False).stdout:
            return
        time.sleep(0.1)
    pytest.fail("the agent outlived the llem process that was killed")


def test_an_engine_that_does_not_import_is_refused_with_one_line(tmp_path):
    broken = tmp_path / "python"
    say = "print('ModuleNotFoundError: No module named torch', file=sys.stderr)"
    broken.write_text(f"#!{sys.executable}\nimport sys\n{say}\nsys.exit(1)\n")
    broken.chmod(0o755)
    with pytest.raises(EnvironmentProblem) as caught:
        LocalRunner("pytorch", python=str(broken)).check(["unused"])
    message = str(caught.value)
    assert "\n" not in message and "No module named torch" in message and "docker runner" in message


# --- the agent starts in its run directory, not in llem's (issue 19, item 8) ---------------


def test_relative_paths_in_the_environment_are_made_absolute_against_llems_directory(tmp_path, monkeypatch):
    """`make gpu-check` sets PYTHONPATH=images/agent: from the run directory it names nothing."""
    home = tmp_path / "llem-home"
    home.mkdir()
    monkeypatch.chdir(home)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["images/agent", "/opt/site", ""]))
    monkeypatch.setenv("PATH", os.pathsep.join(["bin", "/usr/bin"]))
    monkeypatch.setenv("XDG_CACHE_HOME", "cache")
    monkeypatch.setenv("LLEM_UNRELATED", "not/a/path/of/ours")
    spec = build_spec(
        image="unused", study_id="s", run_id="e001-c1", run_dir=Path("study/runs/e001-c1"), hf_home=Path("hf"),
        model_dir=None, gpu_indices=(), host_uid=1000, host_gid=1000, host_pid=os.getpid(),
    )  # fmt: skip
    env = LocalRunner("pytorch").environment(spec)
    # An empty entry means the working directory, so it becomes llem's.
    assert env["PYTHONPATH"] == os.pathsep.join([f"{home}/images/agent", "/opt/site", f"{home}/"])
    assert env["PATH"] == os.pathsep.join([f"{home}/bin", "/usr/bin"])
    assert env["XDG_CACHE_HOME"] == f"{home}/cache"
    assert env["HF_HOME"] == f"{home}/hf"  # the spec's own relative mount source
    assert env["LLEM_UNRELATED"] == "not/a/path/of/ours"  # only variables known to hold paths


def test_a_relative_interpreter_is_the_one_in_llems_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bin").mkdir()
    python = tmp_path / "bin" / "python-for-agent"
    python.write_text(f"#!{sys.executable}\n")
    python.chmod(0o755)
    assert LocalRunner("pytorch", python="bin/python-for-agent").interpreter() == f"{tmp_path}/bin/python-for-agent"
    monkeypatch.setenv("PATH", "bin")  # a bare name found through a relative PATH entry
    assert LocalRunner("pytorch", python="python-for-agent").interpreter() == f"{tmp_path}/bin/python-for-agent"


def without_site(tmp_path: Path) -> str:
    """An interpreter that sees llem_agent only through PYTHONPATH (no site: llem's editable
    install in .venv is not on its path), as on a GPU host where llem is not installed."""
    wrapper = tmp_path / "python-no-site"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -S "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def agent_pythonpath() -> str:
    """images/agent relative to the repository (as `make gpu-check` sets it), then the
    libraries the agent imports (absolute)."""
    libraries = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return os.pathsep.join(["images/agent", *sorted(libraries)])


def test_the_real_agent_starts_from_its_run_directory_with_a_relative_pythonpath(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PYTHONPATH", agent_pythonpath())
    spec = spec_for(tmp_path)
    run_dir = tmp_path / "study" / "runs" / "e001-c1"
    env = LocalRunner("pytorch").environment(spec)
    started = subprocess.run(
        [without_site(tmp_path), "-m", "llem_agent", "--help"], cwd=run_dir, env=env,
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr[-2000:]
    assert started.stdout.startswith("usage: llem-agent")


def test_the_local_runner_starts_the_real_agent_from_its_run_directory(tmp_path, monkeypatch):
    """Through LocalRunner.run: the agent module is found and runs (no experiment file here,
    so it reports that in error.json; before the fix the log said No module named llem_agent)."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PYTHONPATH", agent_pythonpath())
    spec = spec_for(tmp_path)
    run_dir = tmp_path / "study" / "runs" / "e001-c1"
    outcome = LocalRunner("pytorch", python=without_site(tmp_path)).run(spec, 60, tmp_path / "agent.log")
    log = (tmp_path / "agent.log").read_text()
    assert "No module named" not in log, log[-2000:]
    assert outcome.exit_code == 1 and (run_dir / "error.json").exists(), log[-2000:]


def test_the_probe_runs_where_the_agent_runs_not_in_llems_directory(tmp_path, monkeypatch):
    """A module importable only from llem's own directory passes a probe started there, then
    the agent (started in its run directory) cannot import it: the probe must refuse it."""
    home = tmp_path / "llem-home"
    home.mkdir()
    (home / "engine_only_here.py").write_text("")
    monkeypatch.chdir(home)
    monkeypatch.setitem(local_runner.ENGINE_IMPORTS, "pytorch", "engine_only_here")
    with pytest.raises(EnvironmentProblem, match="No module named 'engine_only_here'") as caught:
        LocalRunner("pytorch").check(["unused"])
    assert "\n" not in str(caught.value)


def test_the_probe_sees_the_agents_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PYTHONPATH", agent_pythonpath())
    monkeypatch.setitem(local_runner.ENGINE_IMPORTS, "pytorch", "llem_agent.contract")
    LocalRunner("pytorch", python=without_site(tmp_path)).check(["unused"])  # found through images/agent


def test_an_interpreter_that_is_not_there_is_one_line(tmp_path):
    with pytest.raises(EnvironmentProblem, match="cannot start") as caught:
        LocalRunner("pytorch", python=str(tmp_path / "no-python")).check(["unused"])
    assert "\n" not in str(caught.value)


def test_a_pods_run_records_the_pods_image_by_digest_and_no_tag(tmp_path, fake_python, monkeypatch):
    """issue 23 s2: a Kubernetes pod's runs recorded only image "local"; the Job now tells its pods
    their image (LLEM_POD_IMAGE), and a run records it where it is a digest (a tag can move)."""
    monkeypatch.setenv("FAKE_AGENT", "ok")
    pinned = "registry.example/llem/pytorch-worker@sha256:" + "ab" * 32
    monkeypatch.setenv("LLEM_POD_IMAGE", pinned)
    runner = LocalRunner("pytorch", python=fake_python)
    assert runner.run(spec_for(tmp_path), 30, tmp_path / "agent.log").image_digest == pinned
    monkeypatch.setenv("LLEM_POD_IMAGE", "registry.example/llem/pytorch-worker:0.1.0")
    assert runner.run(spec_for(tmp_path), 30, tmp_path / "agent.log").image_digest is None
    monkeypatch.delenv("LLEM_POD_IMAGE")
    outcome = runner.run(spec_for(tmp_path), 30, tmp_path / "agent.log")
    assert (outcome.image_digest, outcome.image_id) == (None, None)  # a local run outside a pod: no image
