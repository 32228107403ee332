"""The claim protocol every executor shares: exclusive create, refresh, stale break by rename."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

from llem import claims
from llem.claims import (
    GARBAGE_GRACE_S,
    ClaimBoard,
    FileMutex,
    Owner,
    break_if_stale,
    owner_dead,
    owner_token,
)
from llem.manifest import Manifest, ManifestStore, RunEntry

RUNS = [f"e{i:03d}-c1" for i in range(1, 41)]


def _claim_all(study_dir: str, worker: str, out: str, hold: Any = None) -> None:
    board = ClaimBoard(Path(study_dir), worker=worker)
    won = [run for run in RUNS if board.claim(run) is not None]
    Path(out).write_text("\n".join(won))
    if hold is not None:  # alive until every worker is done: a dead owner's claims are free
        hold.wait(30)


def test_racing_workers_claim_every_run_exactly_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    outs = [tmp_path / f"w{i}.txt" for i in range(4)]
    hold = ctx.Event()
    procs = [ctx.Process(target=_claim_all, args=(str(tmp_path), f"w{i}", str(o), hold)) for i, o in enumerate(outs)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 30
    while not all(o.exists() for o in outs) and time.monotonic() < deadline:
        time.sleep(0.01)
    hold.set()
    for p in procs:
        p.join(30)
    won = [line for o in outs for line in o.read_text().splitlines() if line]
    assert sorted(won) == sorted(RUNS)  # each once, none twice, none lost


def test_a_dead_workers_claim_goes_stale_and_one_breaker_wins(tmp_path: Path) -> None:
    board = ClaimBoard(tmp_path, worker="a", stale_after_s=60)
    first = board.claim("e001-c1")
    assert first is not None and board.claim("e001-c1") is None and board.live("e001-c1")
    old = time.time() - 120  # the holder died two minutes ago: no refresh since
    os.utime(first.path, (old, old))
    assert not board.live("e001-c1")
    second = ClaimBoard(tmp_path, worker="b", stale_after_s=60).claim("e001-c1")
    assert second is not None and second.held() and not first.held()
    first.release()  # the old holder, back from the dead, cannot release what it lost
    assert second.held()
    assert not break_if_stale(second.path, 60)  # fresh: nobody may break it


def test_keep_alive_refreshes_a_long_run(tmp_path: Path) -> None:
    board = ClaimBoard(tmp_path, stale_after_s=0.5)
    claim = board.claim("e001-c1")
    assert claim is not None
    with board.keep_alive(claim):
        time.sleep(1.2)  # over twice the stale limit
        assert board.live("e001-c1")
        assert board.claim("e001-c1") is None
    claim.release()
    assert not claim.path.exists()


def _count(study_dir: str, n: int) -> None:
    store = ManifestStore(Path(study_dir), ManifestStore.load(Path(study_dir)))
    for _ in range(n):
        with FileMutex(Path(study_dir) / "counter.lock"):
            counter = Path(study_dir) / "counter"
            counter.write_text(str(int(counter.read_text()) + 1))
        attempts = store.refresh().run("e001-c1").attempts
        store.update_run("e001-c1", attempts=attempts)  # a no-op write: must not lose others' writes


def test_manifest_updates_from_several_processes_are_never_lost(tmp_path: Path) -> None:
    manifest = Manifest(
        study_name="s", study_id="s", study_design_hash="h", llem_version="0", n_cycles=1,
        experiment_order="sequential", shuffle_seed=None,
        runs=[RunEntry(run_id=r, experiment_index=i, cycle=1, config_hash="x", image="i") for i, r in enumerate(RUNS)],
    )  # fmt: skip
    ManifestStore(tmp_path, manifest).publish()
    (tmp_path / "counter").write_text("0")
    ctx = multiprocessing.get_context("fork")

    def mark(run_ids: list[str]) -> None:
        store = ManifestStore(tmp_path, ManifestStore.load(tmp_path))
        for run_id in run_ids:
            store.update_run(run_id, status="completed")

    procs = [ctx.Process(target=mark, args=(RUNS[i::4],)) for i in range(4)]
    procs += [ctx.Process(target=_count, args=(str(tmp_path), 25)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(e.status == "completed" for e in ManifestStore.load(tmp_path).runs)
    assert (tmp_path / "counter").read_text() == "50"


def test_a_claim_of_a_dead_process_on_this_host_is_broken_at_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_claim_all, args=(str(tmp_path), "killed", str(tmp_path / "out.txt")))
    child.start()
    child.join(30)  # it exits holding every claim, as a `kill -9`ed llem would
    board = ClaimBoard(tmp_path, worker="resumed", stale_after_s=3600)
    assert not board.live(RUNS[0])
    assert all(board.claim(run) is not None for run in RUNS)


GHOST = "ghost@elsewhere:7:0123456789ab\n"  # a worker on another host, not heard of for an hour


def _stale_claim(study_dir: Path, run_id: str = "e001-c1") -> Path:
    path = study_dir / "claims" / run_id
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(GHOST)
    old = time.time() - 3600
    os.utime(path, (old, old))
    return path


class _Stepper:
    """Stands in for ``os`` in orchestrator.claims: the thread named ``paused`` stops before its
    ``at``-th call that touches the claims directory, until ``go`` is set."""

    STEPS = ("open", "rename", "link", "unlink", "utime")

    def __init__(self, paused: str, at: int) -> None:
        self.paused, self.at, self.calls = paused, at, 0
        self.reached, self.go = threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if name not in self.STEPS:
            return real

        def step(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread().name == self.paused:
                if self.calls == self.at:
                    self.reached.set()
                    self.go.wait(10)
                self.calls += 1
            return real(*args, **kwargs)

        return step


def _race(study_dir: Path, first: str, second: str, at: int, monkeypatch: Any) -> tuple[dict[str, Any], int]:
    """``first`` breaks the stale claim, paused before its ``at``-th step while ``second`` breaks
    it from start to end; what each got, and how many steps ``first`` took."""
    stepper = _Stepper(first, at)
    monkeypatch.setattr(claims, "os", stepper)
    got: dict[str, Any] = {}

    def claim(name: str) -> None:
        got[name] = ClaimBoard(study_dir, worker=name, stale_after_s=60).claim("e001-c1")

    one = threading.Thread(target=claim, args=(first,), name=first)
    one.start()
    while not stepper.reached.wait(0.005) and one.is_alive():
        pass  # until it is paused, or it finished in fewer steps
    two = threading.Thread(target=claim, args=(second,), name=second)
    two.start()
    two.join(10)
    stepper.go.set()
    one.join(10)
    monkeypatch.setattr(claims, "os", os)
    return got, stepper.calls


def test_two_breakers_of_one_stale_claim_never_both_win_at_any_interleaving(tmp_path: Path, monkeypatch: Any) -> None:
    _stale_claim(tmp_path / "alone")
    _, steps = _race(tmp_path / "alone", "a", "nobody", 10_000, monkeypatch)
    assert steps >= 3
    for at in range(steps + 1):
        for first, second in (("a", "b"), ("b", "a")):
            study = tmp_path / f"{first}{at}"
            path = _stale_claim(study)
            got, _ = _race(study, first, second, at, monkeypatch)
            winners = [name for name, claim in got.items() if claim is not None]
            assert len(winners) == 1, f"{first} paused before step {at}: {winners} both hold e001-c1"
            (winner,) = winners
            assert path.read_text() == got[winner].token + "\n" and got[winner].held()
            leftovers = sorted(p.name for p in path.parent.iterdir())
            assert leftovers == ["e001-c1"], leftovers  # no break token or renamed claim left behind


def _break_all(study_dir: str, name: str, runs: list[str], out: str, together: Any) -> None:
    together.wait(30)  # every breaker starts at once
    board = ClaimBoard(Path(study_dir), worker=name, stale_after_s=60)
    Path(out).write_text("\n".join(run for run in runs if board.claim(run) is not None))
    together.wait(30)  # and stays alive until every breaker is done: a dead owner's claims are free


def test_racing_processes_breaking_stale_claims_win_each_exactly_once(tmp_path: Path) -> None:
    runs = RUNS[:20]
    for run in runs:
        _stale_claim(tmp_path, run)
    ctx = multiprocessing.get_context("fork")
    together = ctx.Barrier(4)
    outs = [tmp_path / f"w{i}.txt" for i in range(4)]
    procs = [
        ctx.Process(target=_break_all, args=(str(tmp_path), f"w{i}", runs, str(o), together))
        for i, o in enumerate(outs)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    won = [line for o in outs for line in o.read_text().splitlines() if line]
    assert sorted(won) == sorted(runs)


def test_an_empty_or_garbage_claim_is_broken_after_a_few_seconds_and_said_meanwhile(tmp_path: Path) -> None:
    board = ClaimBoard(tmp_path, worker="w", stale_after_s=3600)
    board.dir.mkdir()
    (board.dir / "e001-c1").write_bytes(b"")  # killed between create and write
    (board.dir / "e002-c1").write_bytes(b"\x00\xff garbage")
    assert board.claim("e001-c1") is None  # just made: its writer may be writing now
    assert board.holder("e001-c1") == "an unreadable claim (0 bytes, made 0 s ago)"
    old = time.time() - 2 * GARBAGE_GRACE_S
    for run in ("e001-c1", "e002-c1"):
        os.utime(board.path(run), (old, old))
        assert board.holder(run) is None
        claim = board.claim(run)
        assert claim is not None and claim.broke == "garbage" and claim.held()


def test_a_claim_of_a_reused_pid_or_of_an_earlier_boot_is_dead(tmp_path: Path) -> None:
    mine = Owner.parse(owner_token("w"))
    assert mine is not None and mine.pid == os.getpid() and not mine.dead()
    host = socket.gethostname()
    reused = f"w@{host}:{os.getpid()}:{mine.boot}:1:abc"  # this pid, but a process started at tick 1
    rebooted = f"w@{host}:{os.getpid()}:000000000000:{mine.start}:abc"
    if mine.start != "-":
        assert owner_dead(reused)
    if mine.boot != "-":
        assert owner_dead(rebooted)
    assert not owner_dead(f"w@elsewhere:{os.getpid()}:x:y:abc")  # another host: staleness alone
    assert Owner.parse("w@host:12:abc") == Owner("w", "host", 12)  # an earlier llem's token
    for bad in ("", "nonsense", "w@host:pid:abc", "w@host:1:2:abc"):
        assert Owner.parse(bad) is None


def test_a_deleted_claim_is_made_again_by_its_owner_and_never_over_another(tmp_path: Path) -> None:
    board = ClaimBoard(tmp_path, worker="w", stale_after_s=60)
    claim = board.claim("e001-c1")
    assert claim is not None
    shutil.rmtree(board.dir)  # claims/ deleted by hand mid-run
    claim.refresh()
    assert claim.path.read_text() == claim.token + "\n"
    shutil.rmtree(board.dir)
    assert claim.held()  # nobody else took it: still this owner's
    claim.path.write_text("other@elsewhere:1:abc\n")
    assert not claim.held()
    claim.refresh()
    claim.release()
    assert claim.path.read_text() == "other@elsewhere:1:abc\n"  # the new owner's, untouched
