"""The claim protocol every executor shares: exclusive create, refresh, stale break by rename."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

from orchestrator.claims import ClaimBoard, FileMutex, break_if_stale
from orchestrator.manifest import Manifest, ManifestStore, RunEntry

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
