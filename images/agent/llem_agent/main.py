"""Agent entry point: ``llem-agent EXPERIMENT_FILE [--out DIR]``.

EXPERIMENT_FILE is either the ``experiment.json`` the host writes (a RunRequest) or a
plain experiment config in JSON or YAML (``docker compose run`` with a mounted file).
Exit 0 with ``result.json`` written, or non-zero with ``error.json`` written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import stat
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from llem_agent import faults
from llem_agent.contract import (
    CONTAINER_RUN_DIR,
    ERROR_FILE,
    HEARTBEAT_FILE,
    RAW_TRACE_ENV,
    RAW_TRACE_FILE,
    RESULT_FILE,
    TELEMETRY_FILE,
    ExperimentConfig,
    ExperimentResult,
    RunError,
    RunRequest,
    config_hash,
    write_atomic,
)
from llem_agent.contract.config import MAX_CONFIG_FILE_BYTES
from llem_agent.contract.simulation import SIMULATION_LEDGER_FILE
from llem_agent.energy import EnergyMeter, disabled_meter, nvml_meter, visible_gpu_uuids
from llem_agent.energy.simulated import SimulatedNvml
from llem_agent.engines import load_engine, tensor_parallel
from llem_agent.heartbeat import Heartbeat
from llem_agent.measure import model_inputs, run_measurement
from llem_agent.simulation import load_simulation, simulated_engines, simulated_meter, write_ledger

EXIT_FAILED = 1
EXIT_TERMINATED = 143


class Terminated(Exception):
    """SIGTERM arrived (``docker stop``): stop and report it as the failure."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"terminated by signal {signum}")


def _read_document(path: Path) -> Any:
    """The data of an experiment file: JSON, or YAML (``.yaml``/``.yml``) without aliases.

    Bounded as the host bounds a study file: a regular file only (``/dev/zero`` or a FIFO is
    refused without reading it or waiting on it), at most MAX_CONFIG_FILE_BYTES, read at most
    one byte more. The host expands a study's aliases; a plain experiment file needs none, and
    refusing them refuses an alias bomb.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file; llem-agent reads an experiment from a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(MAX_CONFIG_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_FILE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_CONFIG_FILE_BYTES // 2**20} MiB; not an experiment file")
    text = data.decode("utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml  # a transformers dependency, present in every engine image

        class NoAliases(yaml.SafeLoader):
            def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
                if self.check_event(yaml.AliasEvent):
                    raise ValueError(f"{path}: YAML aliases (*name) are not read here; write the values out")
                node: yaml.Node | None = super().compose_node(parent, index)
                return node

        # As the host reads a study: 1e-3 and 1.5e6 are numbers (YAML 1.1 reads them as text).
        exponent = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
        NoAliases.add_implicit_resolver("tag:yaml.org,2002:float", exponent, list("-+0123456789."))
        return yaml.load(text, Loader=NoAliases)  # a SafeLoader: no Python objects
    return json.loads(text)


def load_request(path: Path) -> RunRequest:
    """Read a RunRequest, or wrap a plain experiment config into a standalone one."""
    data = _read_document(path)
    if isinstance(data, dict) and data.get("kind") == "llem.run_request":
        return RunRequest.model_validate(data)
    config = ExperimentConfig.model_validate(data)
    digest = config_hash(config)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return RunRequest(
        run_id=f"standalone-{stamp}-{digest[:8]}", study_name="standalone", cycle=1, config_hash=digest, config=config
    )


def _log(message: str) -> None:
    print(f"[llem-agent {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _meter(request: RunRequest, simulation: SimulatedNvml | None) -> EnergyMeter:
    """The run's meter: real NVML on its GPUs, or the simulator of its simulated GPUs."""
    sampler = request.config.energy_sampler
    if not sampler:
        return disabled_meter()
    if simulation is None:
        return nvml_meter(request.sample_interval_s, sampler, request.gpu_uuids)
    _log(f"SIMULATED GPUs {simulation.device_uuids()}: every GPU figure is a simulator's, not a measurement")
    return simulated_meter(simulation, request.sample_interval_s, sampler)


def _measure(
    request: RunRequest, path: Path, out_dir: Path, heartbeat: Heartbeat, on_phase: Callable[[str], None]
) -> ExperimentResult:
    """Measure the run and write its sidecars (telemetry, raw trace, a simulation's ground truth)."""
    simulation = load_simulation(request)
    meter = _meter(request, simulation).open()

    def phases(name: str) -> None:
        if simulation is not None:
            simulation.phase(name)  # the simulator's power follows the agent's phase
        on_phase(name)

    tokens: int | None = None  # the simulator's J/token truth, once there is a result
    try:
        with heartbeat:
            result = run_measurement(
                request,
                load_engine if simulation is None else simulated_engines(load_engine, simulation),
                meter,
                phases,
                base_dir=path.parent,
                on_progress=heartbeat.progress,
                on_patience=heartbeat.expect,
                visible_gpus=visible_gpu_uuids if simulation is None else simulation.visible_uuids,
                simulated=simulation is not None,
            )
        tokens = result.output_tokens
    finally:
        meter.close()
        if simulation is not None:  # the ground truth, whether or not the run got to a result
            write_ledger(out_dir / SIMULATION_LEDGER_FILE, simulation, meter.window, tokens)
    if request.config.gpu_telemetry and meter.write_telemetry(out_dir / TELEMETRY_FILE):
        _log(f"telemetry written to {TELEMETRY_FILE}")
    raw = meter.raw_trace() if os.environ.get(RAW_TRACE_ENV) else None
    if raw is not None:  # a replay fixture for the unit tests (make gpu-check keeps one)
        write_atomic(out_dir / RAW_TRACE_FILE, json.dumps(raw))
    return result


def _launch_ranks(argv: list[str], ranks: int, out_dir: Path, run_id: str) -> int:
    """The parent of a tensor-parallel run: its ranks under torchrun. When they fail, the first
    failure is the run's (a rank that fails takes the others down with it): the error file
    written first, rank 0's error.json or a follower's, else torchrun's exit code."""
    _log(f"run={run_id}: tensor parallelism over {ranks} processes (torchrun)")
    code, signalled = tensor_parallel.launch(argv, ranks)
    if code == 0:
        return code
    if signalled is not None:  # stopped from outside (docker stop): rank 0 said so, or say it here
        if not (out_dir / ERROR_FILE).exists():
            stopped = RunError(run_id=run_id, type=Terminated.__name__, message=f"terminated by signal {signalled}",
                               phase="measure", traceback="")  # fmt: skip
            write_atomic(out_dir / ERROR_FILE, stopped.model_dump_json(indent=2))
        return EXIT_TERMINATED
    files = [out_dir / ERROR_FILE] + [tensor_parallel.follower_error_file(out_dir, i) for i in range(1, ranks)]
    errors = []
    for index, file in enumerate(files):
        with contextlib.suppress(OSError, ValueError):
            error = RunError.model_validate_json(file.read_text())
            if error.type != Terminated.__name__:  # torchrun ended it: another rank failed first
                errors.append((file.stat().st_mtime_ns, index, error))
    if errors:
        _, index, first = min(errors, key=lambda e: (e[0], e[1]))
        if index > 0:
            first = first.model_copy(update={"message": f"tensor-parallel rank {index}: {first.message}"})
    else:
        message = f"the tensor-parallel ranks (torchrun) exited {code} before any wrote an error; see the log"
        first = RunError(run_id=run_id, type="TensorParallelFailed", message=message, phase="load", traceback="")
    write_atomic(out_dir / ERROR_FILE, first.model_dump_json(indent=2))
    return code if code > 0 else EXIT_FAILED


def _follow(request: RunRequest, path: Path, out_dir: Path) -> int:
    """A tensor-parallel follower: its shard, then rank 0's generate calls until it stops."""
    index, phase = tensor_parallel.rank(), "load"
    try:
        engine = load_engine(request.config.engine)
        source, adapter, dirs = model_inputs(request)
        engine.load(request.config, source, adapter, dirs=dirs)
        phase = "measure"
        faults.follower_fails(request.run_id)
        engine.follow()  # type: ignore[attr-defined]  # the PyTorch engine's, the one with ranks
        return 0
    except (Exception, KeyboardInterrupt) as exc:
        error = RunError(run_id=request.run_id, type=type(exc).__name__, message=str(exc), phase=phase,
                         traceback=traceback.format_exc())  # fmt: skip
        with contextlib.suppress(OSError):
            write_atomic(tensor_parallel.follower_error_file(out_dir, index), error.model_dump_json(indent=2))
        _log(f"tensor-parallel rank {index} failed: {type(exc).__name__}: {exc}")
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llem-agent", description="Measure one experiment.")
    parser.add_argument("experiment", nargs="?", default=f"{CONTAINER_RUN_DIR}/experiment.json")
    parser.add_argument("--out", help="directory for result.json / error.json (default: the file's directory)")
    parser.add_argument("--results-root", help="write into RESULTS_ROOT/<run id>/ instead (standalone use)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)

    path = Path(args.experiment)
    out_dir = Path(args.out) if args.out else path.parent
    phase = "read"
    run_id = "unknown"

    heartbeat = Heartbeat(out_dir / HEARTBEAT_FILE)

    def on_phase(name: str) -> None:
        nonlocal phase
        phase = name
        _log(f"phase={name}")
        heartbeat.phase(name)
        faults.at_phase(name, run_id)

    try:
        request = load_request(path)
        run_id = request.run_id
        if args.results_root:
            out_dir = Path(args.results_root) / run_id
            heartbeat.path = out_dir / HEARTBEAT_FILE
        out_dir.mkdir(parents=True, exist_ok=True)
        ranks = tensor_parallel.processes(request.config)
        if ranks > 1 and not tensor_parallel.launched():
            phase = "load"
            return _launch_ranks(argv if argv is not None else sys.argv[1:], ranks, out_dir, run_id)
        if tensor_parallel.rank() > 0:
            return _follow(request, path, out_dir)
        _log(f"run={run_id} engine={request.config.engine} model={request.config.model}")
        result = _measure(request, path, out_dir, heartbeat, on_phase)
        tensor_parallel.stop_followers()
        text = "{corrupt" if faults.corrupt_result(run_id) else result.model_dump_json(indent=2)
        write_atomic(out_dir / RESULT_FILE, text)
        _log(
            f"done: {result.output_tokens} output tokens, "
            f"{result.throughput.output_tokens_per_s:.1f} tok/s, energy_j={result.energy.energy_j}"
        )
        return 0
    except (Exception, KeyboardInterrupt) as exc:
        error = RunError(
            run_id=run_id, type=type(exc).__name__, message=str(exc), phase=phase, traceback=traceback.format_exc()
        )
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(out_dir / ERROR_FILE, error.model_dump_json(indent=2))
        except OSError as write_exc:
            _log(f"could not write {ERROR_FILE}: {write_exc}")
        _log(f"failed in phase {phase}: {type(exc).__name__}: {exc}")
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())


def run() -> NoReturn:
    """The ``llem-agent`` command: :func:`main`, then exit without tearing the interpreter down.

    Everything is written and closed when main returns. Tearing down an interpreter that holds
    torch and transformers (or vLLM) costs ~0.8 s per run, inside every container.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
