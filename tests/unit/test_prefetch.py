"""The summary's modules are imported while the first run's agent starts, not after the study."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from llem import summary
from llem.runner import Liveness, supervise
from tests.unit.test_studyloop import FakeRunner, run_study


@pytest.fixture
def fresh_prefetch(monkeypatch, tmp_path):
    """A process that has prefetched nothing yet, whose summary modules are two of this test's."""
    monkeypatch.setattr(summary, "_prefetched", [])
    (tmp_path / "llem_test_prefetch_ok.py").write_text("import threading\nTHREAD = threading.current_thread().name\n")
    (tmp_path / "llem_test_prefetch_broken.py").write_text("raise RuntimeError('broken on import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(summary, "SUMMARY_MODULES", ("llem_test_prefetch_broken", "llem_test_prefetch_ok"))
    for name in summary.SUMMARY_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    return summary.SUMMARY_MODULES


def _joined() -> None:
    for thread in summary._prefetched:
        thread.join(10)


def test_the_modules_are_imported_off_the_main_thread_once_and_a_failure_stays_quiet(fresh_prefetch, capsys):
    hooked: list[object] = []
    original_hook = threading.excepthook
    threading.excepthook = hooked.append
    try:
        summary.prefetch_summary_modules()
        summary.prefetch_summary_modules()  # a second run's start: nothing new
        _joined()
    finally:
        threading.excepthook = original_hook
    assert len(summary._prefetched) == 1
    # imported after the broken one failed, in the prefetch thread, not the caller's
    assert sys.modules["llem_test_prefetch_ok"].THREAD == "llem-prefetch"
    assert "llem_test_prefetch_broken" not in sys.modules  # left for the summary to import and report
    assert hooked == [] and capsys.readouterr().err == ""  # no traceback in front of the user


def test_supervise_calls_on_started_once_before_it_first_waits(tmp_path):
    calls: list[str] = []

    def exited(seconds: float) -> bool:
        calls.append("wait")
        return len(calls) >= 3  # ends on the second wait

    liveness = Liveness(
        heartbeat=tmp_path / "heartbeat",
        stall_timeout_s=60,
        poll_s=0.01,
        on_poll=lambda: calls.append("poll"),
        on_started=lambda: calls.append("started"),
    )
    ended = supervise(exited, lambda: None, 60, liveness, start=time.monotonic(), started_at=time.time())
    assert ended == (False, False)  # neither timed out nor hung
    assert calls == ["started", "wait", "poll", "wait"]


def test_a_study_prefetches_as_its_first_run_starts(tmp_path, study_file, monkeypatch, fresh_prefetch):
    """The study loop hands every run's runner the prefetch as its on_started; a runner that
    starts nothing (a fake) never calls it, so the study's own summary imports as before."""
    seen: list[object] = []

    class Recording(FakeRunner):
        def run(self, spec, timeout_s, log_path, liveness=None):
            seen.append(liveness.on_started if liveness is not None else None)
            return super().run(spec, timeout_s, log_path, liveness)

    _, manifest = run_study(tmp_path, study_file, Recording())
    assert manifest.status == "completed"
    assert seen and all(hook is summary.prefetch_summary_modules for hook in seen)
    assert summary._prefetched == []  # nothing started: the fake runner never supervised a run
