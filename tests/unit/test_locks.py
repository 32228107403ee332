import os
import signal
import subprocess
import sys
import textwrap
import time

from llem.locks import CPU_LOCK, DeviceLocks, lock_names


def test_lock_names():
    assert lock_names([1, 0]) == ["gpu0", "gpu1"]
    assert lock_names([]) == [CPU_LOCK]


def test_all_or_none(tmp_path):
    holder = DeviceLocks(["gpu1"], tmp_path)
    assert holder.try_acquire()
    contender = DeviceLocks(["gpu0", "gpu1"], tmp_path)
    assert not contender.try_acquire()
    # gpu0 must not stay held by the failed all-or-none attempt
    assert DeviceLocks(["gpu0"], tmp_path).try_acquire()
    holder.release()


def test_acquire_times_out_then_succeeds_after_release(tmp_path):
    holder = DeviceLocks(["gpu0"], tmp_path)
    assert holder.try_acquire()
    waited: list[list[str]] = []
    other = DeviceLocks(["gpu0"], tmp_path)
    assert not other.acquire(wait_s=0.3, poll_s=0.05, on_wait=waited.append)
    assert waited == [["gpu0"]]
    holder.release()
    assert other.acquire(wait_s=1, poll_s=0.05)
    other.release()


def test_lock_is_freed_when_the_holder_is_sigkilled(tmp_path):
    code = textwrap.dedent(
        f"""
        import time, sys
        from llem.locks import DeviceLocks
        locks = DeviceLocks(["gpu0"], __import__("pathlib").Path({str(tmp_path)!r}))
        assert locks.try_acquire()
        print("held", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        assert not DeviceLocks(["gpu0"], tmp_path).try_acquire()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        locks = DeviceLocks(["gpu0"], tmp_path)
        while not locks.try_acquire():
            assert time.monotonic() < deadline, "lock still held after its holder was SIGKILLed"
            time.sleep(0.05)
        locks.release()
    finally:
        proc.kill()


def test_a_whole_cpu_run_and_runs_pinned_to_cores_exclude_each_other(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    whole = DeviceLocks(lock_names([]), tmp_path)
    assert whole.try_acquire()
    for cores in ((0,), (2, 3)):
        assert not DeviceLocks(lock_names([], cores), tmp_path).try_acquire(), f"cores {cores} under a whole-CPU run"
    assert not DeviceLocks(lock_names([]), tmp_path).try_acquire()
    whole.release()
    slot0, slot1 = DeviceLocks(lock_names([], (0, 1)), tmp_path), DeviceLocks(lock_names([], (2, 3)), tmp_path)
    assert slot0.try_acquire() and slot1.try_acquire()  # disjoint cores side by side
    assert not DeviceLocks(lock_names([]), tmp_path).try_acquire(), "a whole-CPU run beside pinned runs"
    slot0.release()
    assert not DeviceLocks(lock_names([]), tmp_path).try_acquire()
    slot1.release()
    assert DeviceLocks(lock_names([]), tmp_path).try_acquire()
    assert whole.names == ["cpu"]  # what a user is told: the CPU, not every core file behind it
