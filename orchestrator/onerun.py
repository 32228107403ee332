"""One run: its request, its container (or process) under its device locks, its outcome."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from llem_agent.contract import (
    CONTAINER_ADAPTER_DIR,
    CONTAINER_BASELINE_DIR,
    CONTAINER_ENGINE_CACHE,
    CONTAINER_MODEL_DIR,
    CONTAINER_SIMULATION_FILE,
    CONTAINER_TRT_ENGINE_DIR,
    ERROR_FILE,
    HUB_PROMPT_SETS,
    ExperimentConfig,
    ExperimentResult,
    RunError,
    RunRequest,
    write_atomic,
)
from llem_agent.contract.simulation import SIMULATION_TRACE_FILE

from .container import SECRET_ENV, build_spec, dataset_target
from .devices import assign_devices
from .errors import EnvironmentProblem
from .execution import HostSettings, LoopEvents, RunOutcome
from .locks import DeviceLocks, gpu_name, lock_names
from .manifest import ManifestStore, RunFailure, utc_now
from .plan import PlannedRun
from .runner import ContainerOutcome, Liveness, Runner
from .simulation import SIMULATION_FILE, simulated_trace
from .studydir import MAX_ERROR_BYTES, MAX_HEARTBEAT_BYTES, RunDir, StudyDir, read_json
from .summary import prefetch_summary_modules
from .yamlsafe import Unreadable, read_bytes

# Agent exception types that name a failure class of their own.
_ERROR_KINDS = {"GpuNotVisible": "gpu_not_visible", "OutOfMemoryError": "oom", "DeviceLost": "device_lost"}


def image_for(engine: str, images: dict[str, str]) -> str:
    try:
        return images[engine]
    except KeyError:
        raise EnvironmentProblem(f"no image configured for engine '{engine}' (have: {sorted(images)})") from None


def _archive_attempt(run_dir: RunDir, attempt: int) -> None:
    """Keep an earlier attempt's files under ``attempts/N/`` so a re-run loses nothing."""
    files = [p for p in run_dir.path.iterdir() if p.is_file()]
    if attempt < 1 or not files:
        return
    target = run_dir.attempt(attempt)
    target.mkdir(parents=True, exist_ok=True)
    for path in files:
        path.rename(target / path.name)


def collect(run_dir: Path, run_id: str, outcome: ContainerOutcome) -> tuple[ExperimentResult | None, RunFailure | None]:
    """Read what the agent left in ``run_dir`` and decide how the run ended."""
    run = RunDir(run_dir, run_id)
    result_path, error_path = run.result_file, run.error_file
    if outcome.timed_out:
        return None, RunFailure(kind="timeout", message=f"no exit within the run timeout ({outcome.duration_s:.0f} s)")
    if outcome.hung:
        return None, RunFailure(kind="hung", message="the agent stopped making progress (stale heartbeat); killed")
    if outcome.oom_killed:
        return None, RunFailure(kind="oom", message="the container was killed for exceeding its memory limit")
    if result_path.exists() and outcome.exit_code == 0:
        result, problem = run.read_result()
        if problem is not None:
            return None, RunFailure(kind="corrupt_result", message=problem)
        return result, None
    if error_path.exists():
        try:
            error = RunError.model_validate_json(read_bytes(error_path, ERROR_FILE, MAX_ERROR_BYTES) or b"")
            kind = _ERROR_KINDS.get(error.type, "agent_error")
            message = f"{error.phase}: {error.message}"
            if "root cause" in error.message.lower():  # vLLM: "Engine core initialization failed. See root cause above"
                cause = root_cause(run.log_file, error.message)
                message += f" (root cause: {cause})" if cause else ""
            return None, RunFailure(kind=kind, type=error.type, message=message)
        except (ValidationError, ValueError, Unreadable):
            pass
    if outcome.exit_code in (137, 143):
        return None, RunFailure(
            kind="killed", message=f"the container was killed from outside (exit {outcome.exit_code})"
        )
    return None, RunFailure(
        kind="no_result", message=f"container exited {outcome.exit_code} without {result_path.name}"
    )


# An exception line as a process prints it, behind a logger's prefix or not:
# "(EngineCore pid=24) ERROR 12-01 19:55:09 [core.py:1510] ValueError: Available memory ..."
_EXCEPTION_LINE = re.compile(r"(?:^|\] |\s)(?P<line>(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception): \S.*)$")
ROOT_CAUSE_CHARS = 300
_LOG_TAIL_BYTES = 1 << 20


def root_cause(log: Path, said: str) -> str | None:
    """The last exception another process of the engine printed before the agent failed with
    ``said`` (which only points at it): vLLM's engine core prints its own error to the log."""
    try:
        with log.open("rb") as handle:
            handle.seek(max(0, log.stat().st_size - _LOG_TAIL_BYTES))
            lines = handle.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for text in reversed(lines):
        match = _EXCEPTION_LINE.search(text.rstrip())
        if match and said not in match["line"] and "root cause" not in match["line"].lower():
            line = match["line"]
            return line if len(line) <= ROOT_CAUSE_CHARS else line[: ROOT_CAUSE_CHARS - 3] + "..."
    return None


def may_download(config: ExperimentConfig, model_dir: Path | None, adapter_dir: Path | None) -> bool:
    """Whether this run may fetch from the Hugging Face hub: a hub model, adapter or prompt set."""
    hub_adapter = config.lora is not None and config.lora.adapter_id is not None and adapter_dir is None
    return model_dir is None or hub_adapter or config.dataset.source in HUB_PROMPT_SETS


def _tree_bytes(path: Path) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(path):
            if entry.is_dir(follow_symlinks=False):
                total += _tree_bytes(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    return total


class PhaseWatch:
    """Turns the agent's heartbeat into progress events: its phase, batches done while
    measuring, and bytes downloaded into the Hugging Face cache while loading a hub model."""

    def __init__(self, run: PlannedRun, heartbeat: Path, download_dir: Path | None, events: LoopEvents) -> None:
        self.run, self.heartbeat, self.download_dir, self.events = run, heartbeat, download_dir, events
        self._start_bytes = _tree_bytes(download_dir) if download_dir else 0
        self._last: tuple[str, str] | None = None
        self._phase = ""
        self._phase_base = 0  # the agent's batch counter runs on across phases

    def poll(self) -> None:
        beat = read_json(self.heartbeat, MAX_HEARTBEAT_BYTES)  # bounded, and never waits on a FIFO
        try:
            phase, progress = str(beat.get("phase", "?")), int(beat.get("progress", 0))
        except (AttributeError, ValueError, TypeError):
            return
        if phase != self._phase:
            self._phase, self._phase_base = phase, progress
        detail = ""
        if phase in ("warmup", "measure") and progress > self._phase_base:
            detail = f"{progress - self._phase_base} batches"
        elif phase == "load" and self.download_dir is not None:
            grown = _tree_bytes(self.download_dir) - self._start_bytes
            if grown > 0:
                detail = f"{grown / 2**20:,.1f} MiB downloaded"
        if (phase, detail) != self._last:
            self._last = (phase, detail)
            self.events.run_phase(self.run, phase, detail)


@contextlib.contextmanager
def token_file(wanted: bool) -> Iterator[Path | None]:
    """HF_TOKEN as a file only the agent may read (mounted read-only), removed on exit; None
    when the run cannot download or there is no token."""
    token = os.environ.get(SECRET_ENV)
    if not wanted or not token:
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="llem-secret-"))
    try:
        path = folder / "hf_token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token)
        if os.getuid() == 0:  # the unprivileged agent reads it through the root group
            os.chmod(folder, 0o750)
            os.chmod(path, 0o640)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def download_dir(hf_home: Path, model: str, model_dir: Path | None) -> Path | None:
    """Where a hub model lands in the Hugging Face cache (None for a local model)."""
    if model_dir is not None or "/" not in model:
        return None
    return hf_home / "hub" / ("models--" + model.replace("/", "--"))


@dataclass(frozen=True)
class RunInputs:
    """Everything one run is given (not the runner that gives it): where its study lives and
    that study's manifest, the host's options, its engine's runner, and the model, adapter,
    prebuilt engine and prompt files found for its experiment."""

    study_dir: Path
    study_name: str
    store: ManifestStore
    options: HostSettings
    runner: Runner
    events: LoopEvents
    model_dir: Path | None = None
    adapter_dir: Path | None = None
    engine_dir: Path | None = None
    dataset: Path | None = None


def _simulation_files(inputs: RunInputs, gpus: tuple[int, ...]) -> tuple[Path | None, Path | None]:
    """On simulated GPUs: the description its agent's simulated NVML reads, and beside it the
    recorded trace that drives its power (trace=PATH) or none (the agent plays back whatever lies
    there, so a resume without the setting removes an earlier one)."""
    simulation = inputs.options.simulation
    if simulation is None or not gpus:
        return None, None
    simulation_file = (inputs.study_dir / SIMULATION_FILE).resolve()
    write_atomic(simulation_file, simulation.model_dump_json(indent=2))
    simulation_trace = simulation_file.with_name(SIMULATION_TRACE_FILE)
    trace = simulated_trace()
    if trace is None:
        simulation_trace.unlink(missing_ok=True)
        return simulation_file, None
    write_atomic(simulation_trace, trace)
    return simulation_file, simulation_trace


def run_one(
    inputs: RunInputs,
    run: PlannedRun,
    remaining_s: float | None,
    still_ours: Callable[[], bool] = lambda: True,
    check_claim: Callable[[], None] = lambda: None,
) -> RunOutcome:
    """Launch ``run`` through its engine's runner under its device locks and record how it ended.
    ``check_claim`` raises where the run's claim is another worker's now (before its files are
    touched, and again once the devices are locked: a wait for them can outlast a claim);
    ``still_ours`` says whether its outcome is still this worker's to record."""
    config: ExperimentConfig = run.experiment.config
    files = StudyDir(inputs.study_dir).run(run.run_id)
    run_dir = files.path
    check_claim()  # lost to another worker already: nothing of its run is touched
    run_dir.mkdir(parents=True, exist_ok=True)
    attempt = inputs.store.manifest.run(run.run_id).attempts + 1
    _archive_attempt(files, attempt - 1)
    if os.getuid() == 0:
        os.chmod(run_dir, 0o2775)  # the unprivileged agent writes here through the root group
    gpus = assign_devices(config, list(inputs.options.gpu_indices))
    cpus = () if gpus else inputs.options.cpuset  # a parallel slot's cores pin CPU runs only
    uuids = tuple(inputs.options.gpu_uuids[g] for g in gpus if g in inputs.options.gpu_uuids)
    model_dir = inputs.model_dir
    adapter_dir = inputs.adapter_dir
    simulation_file, simulation_trace = _simulation_files(inputs, gpus)
    # The token file lives exactly as long as this run: removed however the run ends (a lock
    # refused, Ctrl-C while queued, a failed start).
    with token_file(may_download(config, model_dir, adapter_dir)) as secret:
        engine_cache = inputs.options.engine_cache if config.engine == "tensorrt" else None
        runner = inputs.runner
        spec = build_spec(
            image=image_for(config.engine, inputs.options.images),
            study_id=inputs.study_dir.name,
            run_id=run.run_id,
            run_dir=run_dir.resolve(),
            hf_home=inputs.options.hf_home,
            model_dir=model_dir,
            gpu_indices=gpus,
            host_uid=os.getuid(),
            host_gid=os.getgid(),
            host_pid=os.getpid(),
            memory_limit=inputs.options.container_memory,
            baseline_cache=inputs.options.baseline_cache,
            adapter_dir=adapter_dir,
            engine_cache=engine_cache,
            engine=config.engine,
            gpu_uuids=uuids,
            prebuilt_engine=inputs.engine_dir,
            dataset_file=inputs.dataset,
            token_file=secret,
            pids_limit=inputs.options.pids_limit,
            cpuset=cpus,
            simulation_file=simulation_file,
            processes=config.engine_section().processes(),
            simulation_trace=simulation_trace,
        )

        def seen(target: str) -> str | None:  # where the agent sees a mount: in its container, or on the host
            mount = spec.mount_at(target)
            return runner.agent_path(mount) if mount is not None else None

        request = RunRequest(
            run_id=run.run_id,
            study_name=inputs.study_name,
            cycle=run.cycle,
            config_hash=run.experiment.config_hash,
            config=config,
            model_path=seen(CONTAINER_MODEL_DIR),
            adapter_path=seen(CONTAINER_ADAPTER_DIR),
            engine_cache_dir=seen(CONTAINER_ENGINE_CACHE),
            engine_path=seen(CONTAINER_TRT_ENGINE_DIR),
            dataset_path=seen(dataset_target(inputs.dataset)) if inputs.dataset else None,
            gpus=[str(g) for g in gpus],
            gpu_uuids=list(uuids) if len(uuids) == len(gpus) else None,
            baseline_cache_dir=seen(CONTAINER_BASELINE_DIR),
            sample_interval_s=inputs.options.sample_interval_s,
            runner="local" if runner.kind == "local" else "docker",
            simulated_gpus=seen(CONTAINER_SIMULATION_FILE),
        )
        lock_dir = inputs.options.lock_dir
        simulated = simulation_file is not None
        locks = DeviceLocks(lock_names(gpus, cpus, simulated) if lock_dir else [], lock_dir or Path("."))
        if not locks.acquire(inputs.options.lock_wait_s, on_wait=inputs.events.waiting_for_devices):
            raise EnvironmentProblem(
                f"devices {locks.names} are locked by another study (lock files in {lock_dir}); "
                "wait for it, or run without --no-wait to queue behind it"
            )
        with locks:
            check_claim()  # the wait for the devices may have outlasted the claim
            write_atomic(files.request_file, request.model_dump_json(indent=2))
            inputs.store.update_run(
                run.run_id,
                status="running",
                started_at=utc_now(),
                finished_at=None,
                failure=None,
                attempts=attempt,
                devices=[gpu_name(g, simulated) for g in gpus] or [f"cpu{c}" for c in cpus] or ["cpu"],
                host=socket.gethostname(),
                # What this attempt runs in (a resume or another worker may differ from the plan).
                image="local" if runner.kind == "local" else spec.image,
                runner="local" if runner.kind == "local" else "docker",
                image_id=None,  # known once its container ran (an earlier attempt's is not this one's)
                image_digest=None,
            )
            timeout = (
                inputs.options.run_timeout_s if remaining_s is None else min(inputs.options.run_timeout_s, remaining_s)
            )
            watch = PhaseWatch(
                run,
                files.heartbeat_file,
                download_dir(inputs.options.hf_home, config.model, model_dir),
                inputs.events,
            )
            liveness = Liveness(
                files.heartbeat_file,
                inputs.options.stall_timeout_s,
                on_poll=watch.poll,
                on_started=prefetch_summary_modules,  # while the agent starts, not after the study
            )
            outcome = runner.run(spec, max(timeout, 1.0), files.log_file, liveness)
    result, failure = collect(run_dir, run.run_id, outcome)
    if not still_ours():  # judged dead (stale claim) and claimed by another worker: its record stands
        entry = inputs.store.refresh().run(run.run_id)
        return RunOutcome(run=run, entry=entry, result=None)
    entry = inputs.store.update_run(
        run.run_id,
        status="completed" if result is not None else "failed",
        finished_at=utc_now(),
        wall_s=round(outcome.duration_s, 3),
        exit_code=outcome.exit_code,
        failure=failure,
        image_id=outcome.image_id,  # the image that ran, whatever its tag names by now
        image_digest=outcome.image_digest,
    )
    return RunOutcome(run=run, entry=entry, result=result)
