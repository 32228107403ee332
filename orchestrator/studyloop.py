"""Run a plan: for each run take its device locks, launch one container, collect its result."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from . import opening
from .claims import Claim, ClaimBoard, age_s
from .container import ContainerSpec, Mount
from .errors import EnvironmentProblem, Interrupted, LlemError
from .execution import HostSettings, LoopEvents, RunOutcome
from .manifest import (
    CLAIMABLE,
    Manifest,
    ManifestStore,
    RunEntry,
    RunFailure,
    StudyStatus,
    utc_now,
)
from .onerun import RunInputs, image_for, run_one
from .plan import Plan, PlannedRun
from .policy import CircuitBreaker, WallClock
from .preflight import Found, images_by_engine, preflight
from .preflight import describe as describe_runners
from .results import StudySummary, summarise
from .runner import ContainerOutcome, Liveness, Runner
from .studydir import StudyDir, final_status


@dataclass
class _Loop:
    """Where a runner's claim loop stands."""

    todo: list[PlannedRun]
    worker: str | None
    breaker: CircuitBreaker
    clock: WallClock
    final: StudyStatus | None = None
    current: PlannedRun | None = None
    claim: Claim | None = None
    previous: PlannedRun | None = None
    position: int = 0


class ClaimLost(Exception):
    """The run's claim is another worker's now (this one was judged dead): it must not start."""


class _ClaimGuard:
    """A runner that starts a run only while ``still_ours()`` says its claim is this worker's."""

    def __init__(self, inner: Runner, still_ours: Callable[[], bool]) -> None:
        self.inner, self.still_ours = inner, still_ours
        self.kind = inner.kind

    def agent_path(self, mount: Mount) -> str:
        return self.inner.agent_path(mount)

    def check(self, images: Iterable[str]) -> None:
        self.inner.check(images)

    def describe(self, images: Iterable[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        return self.inner.describe(images)

    def run(
        self, spec: ContainerSpec, timeout_s: float, log_path: Path, liveness: Liveness | None = None
    ) -> ContainerOutcome:
        if not self.still_ours():
            raise ClaimLost(spec.name)
        return self.inner.run(spec, timeout_s, log_path, liveness)


class StudyLoop:
    """Executes a plan through a runner and keeps the manifest true at every step."""

    def __init__(
        self,
        plan: Plan,
        options: HostSettings,
        runner: Runner | Mapping[str, Runner],
        events: LoopEvents,
    ) -> None:
        """``runner``: one for every engine, or one per engine (``runners:``: docker or local)."""
        self.plan = plan
        self.options = options
        self.runner = runner
        self.events = events
        self.study_dir: Path | None = None
        self._store: ManifestStore | None = None
        self._found = Found()  # the files the preflight found for each experiment
        self._study_lock: FileLock | None = None
        self._guard: Callable[[], bool] | None = None  # while a claimed run goes: is it still ours?
        self.summary: StudySummary | None = None

    def preflight(self, here: bool = True) -> None:
        """Everything that can fail before a results directory exists (:func:`.preflight.preflight`);
        what it finds for each experiment is what its runs mount."""
        self._found = preflight(self.plan, self.options, self.runner_for, here)

    def _runner_facts(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """What this host's runners say about themselves and the study's images (host.json)."""
        return describe_runners(images_by_engine(self.plan, self.options), self.runner_for)

    def runner_for(self, engine: str) -> Runner:
        """The runner that runs ``engine``'s experiments (during a claimed run: one that makes
        sure the claim is still this worker's right before the run's container starts)."""
        if isinstance(self.runner, Mapping):
            try:
                runner = self.runner[engine]
            except KeyError:
                raise EnvironmentProblem(f"no runner configured for engine '{engine}'") from None
        else:
            runner = self.runner
        return runner if self._guard is None else _ClaimGuard(runner, self._guard)

    def _entry(self, run: PlannedRun) -> RunEntry:
        engine = run.experiment.config.engine
        local = self.runner_for(engine).kind == "local"
        return RunEntry(
            run_id=run.run_id,
            experiment_index=run.experiment.index,
            cycle=run.cycle,
            config_hash=run.experiment.config_hash,
            image="local" if local else image_for(engine, self.options.images),
            runner="local" if local else "docker",
        )

    def _open(self, study_dir: Path, manifest: Manifest) -> Path:
        # One llem process per study directory; flock frees it however the holder dies.
        lock = FileLock(StudyDir(study_dir).lock_file)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise EnvironmentProblem(f"{study_dir} is being run by another llem process") from None
        self._study_lock = lock
        self._store = ManifestStore(study_dir, manifest)
        self.study_dir = study_dir
        self._store.publish()
        self._store.set_status("running")
        return study_dir

    def attach(self, study_dir: Path) -> None:
        """Join a study other workers may be running (``llem worker``): no lock, no status change."""
        self._store = ManifestStore.attach(study_dir)  # ConfigError, in one line, without a readable manifest
        self.study_dir = study_dir

    def release(self) -> None:
        """Let go of the study directory without running it (its runs go to other workers)."""
        if self._study_lock is not None:
            self._study_lock.release()
            self._study_lock = None

    def prepare(self, describe: bool = True) -> Path:
        """Create the study directory (:func:`.opening.create`) and run it from this process
        (``describe=False``: host.json without this host's runners, for runs elsewhere)."""
        study_dir, manifest = opening.create(self.plan, self.options, self._entry, self._facts(describe))
        return self._open(study_dir, manifest)

    def resume(self, study_dir: Path, describe: bool = True) -> Path:
        """Continue an earlier study (:func:`.opening.resume`): its completed runs stay, every
        other run runs again."""
        manifest = opening.resume(study_dir, self.plan, self.options, self._entry, self._facts(describe))
        return self._open(study_dir, manifest)

    def _facts(self, describe: bool) -> opening.Facts:
        return self._runner_facts if describe else lambda: ({}, {})

    def execute(self, worker: str | None = None) -> list[RunOutcome]:
        """Run every run that is pending (or was interrupted) under the study's policies, each
        under a claim (:mod:`orchestrator.claims`), so that other workers may share the study.

        Runs a live worker holds are looked at again until they are finished or free (a claim
        whose worker died goes stale, or at once when it was a process of this host): this
        returns only when no run is claimable and no claim is live, or a policy stopped it.
        ``worker``: run as one worker of several (``llem worker``: Slurm array tasks, Kubernetes
        pods): a policy that stops it leaves the other runs to the others. Whoever finds nothing
        left gives the study its final status. Ctrl-C / SIGTERM marks the current run interrupted
        (claimable again) and raises. Returns an outcome for every run of the plan.
        """
        assert self._store is not None and self.study_dir is not None, "call prepare() or resume() first"
        board = ClaimBoard(self.study_dir, worker, self.options.claim_stale_s)
        todo = [run for run in self.plan.runs if self._store.manifest.run(run.run_id).status in CLAIMABLE]
        loop = _Loop(
            todo=todo,
            worker=worker,
            breaker=CircuitBreaker(self.options.max_consecutive_failures, self.options.circuit_breaker_cooldown_s),
            clock=WallClock(self.options.wall_clock_limit_s),
        )
        pending, said = todo, ""
        try:
            while pending and loop.final is None:
                held = self._one_pass(board, loop, pending)
                pending = [run for run in pending if run.run_id in held]
                if pending and loop.final is None:
                    said = self._wait_for_others(held, said)
        except (KeyboardInterrupt, OSError, LlemError) as exc:
            self._mark_stopped(loop.current, study=worker is None)
            raise self._stopped_by(exc) from None
        finally:
            if loop.claim is not None:
                loop.claim.release()
            if self._study_lock is not None:
                self._study_lock.release()
        self._conclude(loop.final, board)
        return [self._outcome(run) for run in self.plan.runs]

    def _one_pass(self, board: ClaimBoard, loop: _Loop, pending: list[PlannedRun]) -> dict[str, str]:
        """Claim and run, in plan order, each of ``pending`` that is free; the runs that other
        workers hold now, with who holds each."""
        execution = self.plan.study.execution
        held: dict[str, str] = {}
        for run in pending:
            if loop.clock.expired():
                loop.final = "timed_out"
                if loop.worker is None:  # a worker leaves the rest to the others
                    self._skip_free(board, loop.todo, "timed_out", "the study's wall-clock limit was reached")
                break
            loop.claim, holder = self._claim(board, run)
            if loop.claim is None:
                if holder is not None:
                    held[run.run_id] = holder
                continue
            if loop.previous is not None:
                new_cycle = run.cycle != loop.previous.cycle
                config_gap, cycle_gap = self.options.gaps_s(execution)
                self._sleep(cycle_gap if new_cycle else config_gap)
            loop.current = loop.previous = run
            loop.position += 1
            self.events.run_started(run, loop.position, len(loop.todo))
            outcome = self._run_claimed(board, run, loop.claim, loop.clock.remaining_s())
            loop.current = loop.claim = None
            if outcome is None:  # another worker owns it now: its record stands
                continue
            self.events.run_finished(outcome)
            decision = loop.breaker.record(outcome.entry.status == "completed")
            if decision == "abort":
                loop.final = "circuit_open"
                if loop.worker is None:
                    self._skip_free(board, loop.todo, "circuit_open", "the circuit breaker stopped the study")
                break
            if decision == "cooldown" and loop.position < len(loop.todo):
                self._sleep(self.options.circuit_breaker_cooldown_s)
                loop.breaker.probe()
        return held

    def _run_claimed(
        self, board: ClaimBoard, run: PlannedRun, claim: Claim, remaining_s: float | None
    ) -> RunOutcome | None:
        """Run ``run`` under ``claim``, kept fresh meanwhile; None when the claim turned out to be
        another worker's before the run's container started (nothing recorded, nothing run)."""
        assert self._store is not None
        store = self._store
        attempt = store.manifest.run(run.run_id).attempts + 1  # the attempt run_one records

        def still_ours() -> bool:
            """The claim is this worker's and the manifest still has this attempt running: a worker
            judged dead (frozen past the stale period) never records over the run's new owner."""
            if not claim.held():
                return False
            entry = store.refresh().run(run.run_id)
            return entry.status == "running" and entry.attempts == attempt

        def check_claim() -> None:
            if not claim.held():
                raise ClaimLost(run.run_id)

        with board.keep_alive(claim):
            try:
                self._guard = still_ours
                outcome = self._run_one(run, remaining_s, still_ours, check_claim)
            except ClaimLost:
                self._say(f"{run.run_id}: claimed by another worker before its container started; left to it")
                return None
            finally:
                self._guard = None
        claim.release()
        return outcome

    def _wait_for_others(self, held: dict[str, str], said: str) -> str:
        """Say which runs other workers hold (when that changed), then pause before looking again."""
        text = "; ".join(f"{run_id} held by {holder.rpartition(' (')[0]}" for run_id, holder in sorted(held.items()))
        if text != said:
            self._say(f"waiting for {len(held)} run(s) other workers hold: {text}")
        time.sleep(self._poll_s())
        return text

    def _poll_s(self) -> float:
        """How often runs held elsewhere are looked at again (a tenth of the stale period, at most 2 s)."""
        return max(0.05, min(self.options.claim_stale_s / 10, 2.0))

    def _say(self, text: str) -> None:
        """A line for whoever follows this runner (a worker's log); silent where nobody listens."""
        say = getattr(self.events, "note", None)
        if callable(say):
            say(text)

    def _skip_free(self, board: ClaimBoard, todo: list[PlannedRun], kind: str, message: str) -> None:
        """Mark skipped every run of ``todo`` still to run that no other worker holds."""
        assert self._store is not None
        runs = self._store.refresh()
        self._skip(
            [r for r in todo if runs.run(r.run_id).status in CLAIMABLE and not board.live(r.run_id)], kind, message
        )

    def _stopped_by(self, exc: BaseException) -> LlemError:
        """The error a stopped study ends with: Ctrl-C / SIGTERM, the results directory failing
        (full, read-only, gone), or the environment breaking mid-study (daemon gone, device held)."""
        if isinstance(exc, KeyboardInterrupt):
            return Interrupted(
                f"interrupted; completed results are kept in {self.study_dir} (--resume-dir {self.study_dir} continues)"
            )
        if isinstance(exc, OSError):
            return EnvironmentProblem(f"results directory {self.study_dir}: {exc.strerror or exc}")
        assert isinstance(exc, LlemError)
        return exc

    def _claim(self, board: ClaimBoard, run: PlannedRun) -> tuple[Claim | None, str | None]:
        """A claim on ``run``, or (None, who holds it) while a live worker does, or (None, None)
        when it is finished. A run the manifest says is running and whose agent still beats is
        held, claim file or not (``claims/`` deleted, a frozen worker's container still measuring),
        unless the claim broken was of a dead process of this host (its container is removed
        when this worker's starts)."""
        assert self._store is not None and self.study_dir is not None
        claim = board.claim(run.run_id)
        if claim is None:
            holder = board.holder(run.run_id)
            return None, holder or "a claim that changed hands just now"
        entry = self._store.refresh().run(run.run_id)
        if entry.status not in CLAIMABLE:
            claim.release()
            return None, None
        if entry.status == "running" and claim.broke != "dead":
            beat = age_s(StudyDir(self.study_dir).run(run.run_id).heartbeat_file)
            if beat is not None and beat < board.stale_after_s:
                claim.release()
                return None, f"an agent that still beats without a live claim ({beat:.0f} s ago)"
        return claim, None

    def _conclude(self, final: StudyStatus | None, board: ClaimBoard) -> None:
        """Set the study's final status, saying what is left. Nothing is left to wait for when this
        is called, unless a policy stopped this runner (the others may go on; the status says
        what they hold) or another worker took over a run from this one (that worker concludes)."""
        assert self._store is not None
        runs = self._store.refresh().runs
        ended = final_status((entry.status for entry in runs), final, held=board.live_claims())
        if ended is None:
            return  # a run this runner lost to another worker: the one that holds it concludes
        self._store.set_status(ended.status, detail=ended.detail)
        self._summarise()

    def _summarise(self) -> None:
        """Statistics across cycles of what has completed so far (best effort: results are safe)."""
        assert self.study_dir is not None
        with contextlib.suppress(LlemError, OSError, ValueError):
            self.summary = summarise(self.study_dir, self.options.factors)

    def _mark_stopped(self, current: PlannedRun | None, study: bool = True) -> None:
        """Best effort: record that the run (and with ``study`` the study) stopped early (the
        disk may be what failed). An interrupted run is claimable again."""
        assert self._store is not None
        with contextlib.suppress(LlemError):
            if current is not None:
                self._store.update_run(current.run_id, status="interrupted", finished_at=utc_now())
            if study:
                self._store.set_status("interrupted")
        self._summarise()

    def _skip(self, runs: list[PlannedRun], kind: str, message: str) -> None:
        assert self._store is not None
        for run in runs:
            self._store.update_run(run.run_id, status="skipped", failure=RunFailure(kind=kind, message=message))

    def _outcome(self, run: PlannedRun) -> RunOutcome:
        assert self._store is not None and self.study_dir is not None
        entry = self._store.manifest.run(run.run_id)
        result = None
        if entry.status == "completed":  # damaged since: no result here, and the next --resume runs it again
            result = StudyDir(self.study_dir).run(run.run_id).read_result()[0]
        return RunOutcome(run=run, entry=entry, result=result)

    def completed_count(self) -> int:
        """Runs of this study already completed (a resumed study starts from these)."""
        return sum(1 for e in self._store.manifest.runs if e.status == "completed") if self._store else 0

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.events.pausing(seconds)
            time.sleep(seconds)

    def _run_one(
        self,
        run: PlannedRun,
        remaining_s: float | None,
        still_ours: Callable[[], bool] = lambda: True,
        check_claim: Callable[[], None] = lambda: None,
    ) -> RunOutcome:
        assert self._store is not None and self.study_dir is not None
        index = run.experiment.index
        inputs = RunInputs(
            study_dir=self.study_dir,
            study_name=self.plan.study.name,
            store=self._store,
            options=self.options,
            runner=self.runner_for(run.experiment.config.engine),
            events=self.events,
            model_dir=self._found.model_dirs.get(index),
            adapter_dir=self._found.adapter_dirs.get(index),
            engine_dir=self._found.engine_dirs.get(index),
            dataset=self._found.datasets.get(index),
        )
        return run_one(inputs, run, remaining_s, still_ours, check_claim)
