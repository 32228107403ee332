"""Parallel slots: disjoint devices, the overlap record, CPU pinning and its locks."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llem.cli_cluster import parse_cpuset
from llem.errors import ConfigError
from llem.locks import lock_names
from llem.parallel import Slot, parse_parallel, plan_slots
from llem.results import overlaps


def test_gpu_slots_are_disjoint_and_sized_by_the_largest_run():
    slots = plan_slots(None, [0, 1, 2, 3, 4, 5, 6, 7], need=2, cores=[0])
    assert [s.gpus for s in slots] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert plan_slots(3, [0, 1, 2, 3, 4, 5, 6, 7], need=2, cores=[0])[2].gpus == (4, 5)
    with pytest.raises(ConfigError, match="need 10 GPUs"):
        plan_slots(5, [0, 1, 2, 3, 4, 5, 6, 7], need=2, cores=[0])


def test_cpu_slots_split_the_cores_and_auto_means_one_on_cpu():
    assert [s.cpus for s in plan_slots(2, [], need=1, cores=[0, 1, 2, 3, 4])] == [(0, 1), (2, 3)]
    assert len(plan_slots(None, [], need=1, cores=[0, 1, 2, 3])) == 1
    with pytest.raises(ConfigError, match="need a core each"):
        plan_slots(3, [], need=1, cores=[0, 1])
    assert Slot((), (2, 3)).flags() == ["--gpus=", "--cpuset=2,3"]


def test_parallel_values():
    assert parse_parallel("auto") is None and parse_parallel("4") == 4 and parse_parallel(2) == 2
    for bad in ("0", "-1", "many"):
        with pytest.raises(ConfigError):
            parse_parallel(bad)


def test_overlapping_windows_are_found_both_ways_and_touching_ones_are_not():
    windows = {"a": (0.0, 10.0), "b": (5.0, 12.0), "c": (12.0, 20.0), "d": (30.0, 31.0), "e": (1.0, 2.0)}
    assert overlaps(windows) == {"a": {"b", "e"}, "b": {"a"}, "e": {"a"}}
    on_nodes = {"a": "node1", "b": "node2", "c": "node1", "d": "node1", "e": "node1"}
    assert overlaps(windows, on_nodes) == {"a": {"e"}, "e": {"a"}}  # other nodes share nothing measured


def test_pinned_cpu_runs_lock_their_cores_and_gpu_runs_their_gpus():
    assert lock_names((), (2, 3)) == ["cpu2", "cpu3"]
    assert lock_names((1,), (2, 3)) == ["gpu1"]
    assert lock_names(()) == ["cpu"]


def test_cpuset_syntax():
    assert parse_cpuset("0") == (0,)
    with pytest.raises(ConfigError, match="expects cores"):
        parse_cpuset("a-b")
    with pytest.raises(ConfigError, match="not available"):
        parse_cpuset("0-4096")


WORKER = """
import os, pathlib, signal, sys, time
marks = pathlib.Path(sys.argv[1])
def stop(signum, frame):
    (marks / f"stopped-{os.getpid()}").write_text("")
    os._exit(130)
signal.signal(signal.SIGTERM, stop)
print("worker", sys.argv[2:], flush=True)
(marks / f"up-{os.getpid()}").write_text("")
time.sleep(600)
"""
PARENT = """
import sys
from pathlib import Path
from llem.parallel import Slot, run_workers
run_workers(Path(sys.argv[1]), [Slot((), (0,)), Slot((), (1,))], [sys.executable, "-c", sys.argv[2], sys.argv[3]],
            lambda done, total: None, poll_s=0.05)
"""


def _wait_for(path: Path, pattern: str, count: int, timeout_s: float = 30) -> list[Path]:
    deadline = time.monotonic() + timeout_s
    while len(found := sorted(path.glob(pattern))) < count:
        assert time.monotonic() < deadline, f"{count} x {pattern} never appeared in {path}: {found}"
        time.sleep(0.05)
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state == "Z"


def test_workers_stop_when_llem_is_killed_and_their_logs_are_appended_to(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    for attempt in (1, 2):
        parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path), WORKER, str(marks)])
        ups = _wait_for(marks, "up-*", 2 * attempt)
        parent.send_signal(signal.SIGKILL)  # llem killed -9: nothing of it can ask its workers to stop
        parent.wait(10)
        stopped = _wait_for(marks, "stopped-*", 2 * attempt)  # each worker was told, and stopped as on Ctrl-C
        assert {p.name[len("stopped-") :] for p in stopped} == {p.name[len("up-") :] for p in ups}
        for up in ups:
            pid = int(up.name[len("up-") :])
            deadline = time.monotonic() + 10
            while not _gone(pid):
                assert time.monotonic() < deadline, f"worker {pid} outlived llem"
                time.sleep(0.05)
    log = (tmp_path / "workers" / "slot0.log").read_text()
    assert log.count("worker ['--worker-id', 'slot0', '--gpus=', '--cpuset=0']") == 2, log  # both attempts kept
    assert log.count("--- ") == 2
