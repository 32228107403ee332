"""``llem``: the command line. Every error reaches the user as one line and an exit code."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from rich.console import Console

from llem_agent.contract import ENGINES, canonical_engine
from orchestrator import __version__
from orchestrator.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_RUNS_FAILED, ConfigError, LlemError
from orchestrator.locks import DEFAULT_LOCK_DIR
from orchestrator.plan import make_plan
from orchestrator.study import ExperimentOrder, Study, load_study

if TYPE_CHECKING:
    from orchestrator.runner import RunnerOptions

DEFAULT_IMAGE = "llem/{engine}:" + __version__
ORDERS: tuple[ExperimentOrder, ...] = ("sequential", "interleave", "shuffle", "reverse", "latin_square")


def resolve_images(study_images: dict[str, str], overrides: Sequence[str]) -> dict[str, str]:
    """Image per engine; later wins: ``llem/<engine>:<version>``, the study's ``runners:``,
    ``LLEM_IMAGE_<ENGINE>``, ``--image``."""
    images = {e: DEFAULT_IMAGE.format(engine=e) for e in ENGINES} | study_images
    images |= {e: os.environ[f"LLEM_IMAGE_{e.upper()}"] for e in ENGINES if os.environ.get(f"LLEM_IMAGE_{e.upper()}")}
    for item in overrides:
        engine, sep, ref = item.partition("=")
        if not sep or not ref or canonical_engine(engine) not in ENGINES:
            raise ConfigError(f"--image expects ENGINE=IMAGE with ENGINE one of {list(ENGINES)}, got {item!r}")
        images[canonical_engine(engine)] = ref
    return images


def _gpu_indices(spec: str | None) -> tuple[int, ...]:
    from orchestrator.devices import discover_gpus

    found = [g.index for g in discover_gpus()]
    if spec is None:
        return tuple(found)
    try:
        wanted = tuple(int(x) for x in spec.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--gpus expects comma-separated indices such as 0,1, got {spec!r}") from None
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise ConfigError(f"--gpus names GPUs {missing} that NVML does not see (visible: {found})")
    return wanted


def ensure_shared_dirs(paths: Sequence[Path | None]) -> None:
    """Create the directories every run's container mounts (HF cache, baseline cache)."""
    for shared in paths:
        if shared is not None and not shared.exists():
            shared.mkdir(parents=True)
            if os.getuid() == 0:  # llem's unprivileged agent (root group) writes into it
                os.chmod(shared, 0o2775)


def baseline_cache_dir() -> Path:
    """Idle baselines cached across runs and studies: LLEM_BASELINE_CACHE, else the user cache."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llem" / "baselines"
    return Path(os.environ.get("LLEM_BASELINE_CACHE", default)).expanduser()


def runner_options(args: argparse.Namespace, study: Study) -> RunnerOptions:
    """Host settings of this invocation: CLI flags over the study's study_execution."""
    from orchestrator.models import hf_home
    from orchestrator.runner import RunnerOptions

    if args.run_timeout <= 0:
        raise ConfigError(f"--run-timeout must be positive, got {args.run_timeout}")
    if not 0.001 <= args.sample_interval <= 10:
        raise ConfigError(f"--sample-interval must be between 0.001 and 10 seconds, got {args.sample_interval}")
    if args.stall_timeout <= 0:
        raise ConfigError(f"--stall-timeout must be positive, got {args.stall_timeout}")
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError(f"--timeout must be positive hours, got {args.timeout}")
    execution = study.execution
    breaker = execution.max_consecutive_failures
    if args.fail_fast:
        breaker = 1
    elif args.no_circuit_breaker:
        breaker = 0
    hours = args.timeout if args.timeout is not None else execution.wall_clock_timeout_hours
    return RunnerOptions(
        results_root=Path(args.results_dir),
        images=resolve_images(study.images, args.image),
        run_timeout_s=args.run_timeout,
        gpu_indices=_gpu_indices(args.gpus),
        lock_dir=None if args.no_lock else Path(args.lock_dir),
        lock_wait_s=0.0 if args.no_wait else None,
        hf_home=hf_home(),
        baseline_cache=baseline_cache_dir(),
        stall_timeout_s=args.stall_timeout,
        sample_interval_s=args.sample_interval,
        container_memory=args.container_memory,
        max_consecutive_failures=breaker,
        circuit_breaker_cooldown_s=execution.circuit_breaker_cooldown_seconds,
        wall_clock_limit_s=None if hours is None else hours * 3600.0,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.display import ProgressDisplay, summary_table
    from orchestrator.launcher import DockerLauncher
    from orchestrator.reaper import reap_orphans
    from orchestrator.runner import StudyRunner, newest_unfinished

    # Pipes and CI logs get a wide, fixed width instead of rich's 80-column fallback.
    out = Console(width=None if sys.stdout.isatty() else 150)
    err = Console(stderr=True, width=None if sys.stderr.isatty() else 150)
    if args.json and not args.dry_run:
        raise ConfigError("--json goes with --dry-run")
    study = load_study(Path(args.study), name_override=args.name)
    plan = make_plan(study, n_cycles=args.cycles, order=args.order)
    if args.dry_run:
        from orchestrator.dryrun import print_json, print_text

        if args.json:
            print_json(plan)
        else:
            print_text(plan, out)
        return EXIT_OK
    options = runner_options(args, study)
    for skipped in study.skipped:
        err.print(f"[yellow]skipping[/] grid point {skipped.index + 1}: {skipped.reason}")
    launcher = DockerLauncher()
    runner = StudyRunner(plan, options, launcher, events=_NoEvents())
    runner.preflight()
    for name in reap_orphans(launcher):
        err.print(f"removed orphan container {name} (its llem process is gone)")
    ensure_shared_dirs([options.hf_home, options.baseline_cache])
    if args.resume or args.resume_dir:
        previous = Path(args.resume_dir) if args.resume_dir else newest_unfinished(options.results_root, study.name)
        study_dir = runner.resume(previous)
    else:
        study_dir = runner.prepare()
    err.print(f"study {study.name}: {len(plan.runs)} runs -> {study_dir}")
    with ProgressDisplay(plan, err) as display:
        runner.events = display
        outcomes = runner.execute()
    out.print(summary_table(plan, outcomes))
    failed = [o for o in outcomes if o.entry.status != "completed"]
    for outcome in failed:
        failure = outcome.entry.failure
        reason = f"{failure.kind}: {failure.message}" if failure else outcome.entry.status
        out.print(f"[red]failed[/] {outcome.entry.run_id}: {reason}")
    for skipped in study.skipped:
        out.print(f"[yellow]skipped[/] grid point {skipped.index + 1}: {skipped.reason}")
    out.print(f"{len(outcomes) - len(failed)}/{len(outcomes)} runs completed; results in {study_dir}")
    return EXIT_RUNS_FAILED if failed else EXIT_OK


class _NoEvents:
    def run_started(self, *args: object) -> None: ...

    def run_finished(self, *args: object) -> None: ...

    def waiting_for_devices(self, *args: object) -> None: ...

    def pausing(self, *args: object) -> None: ...


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llem", description="Measure energy, throughput and latency of LLM inference."
    )
    parser.add_argument("--version", action="version", version=f"llem {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a study or single-experiment YAML file")
    run.add_argument("study", help="study or experiment YAML file")
    run.add_argument("--dry-run", action="store_true", help="print the plan and exit without running anything")
    run.add_argument("--json", action="store_true", help="with --dry-run: print the plan as one JSON object")
    run.add_argument("--cycles", type=int, help="number of cycles (default: study_execution.n_cycles, else 3)")
    run.add_argument("--order", choices=ORDERS, help="experiment order (default: study_execution, else shuffle)")
    run.add_argument("--name", help="study name (default: name: in the file, else the file name)")
    run.add_argument(
        "--results-dir", default=os.environ.get("LLEM_RESULTS_DIR", "results"), help="where study directories go"
    )
    run.add_argument("--image", action="append", default=[], metavar="ENGINE=IMAGE", help="image for an engine")
    run.add_argument("--gpus", help="GPU indices the study may use, e.g. 0,1 (default: all NVML sees)")
    run.add_argument("--run-timeout", type=float, default=3600.0, metavar="S", help="per-run timeout in seconds")
    run.add_argument(
        "--stall-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="kill a run whose agent shows no progress for S seconds while measuring (default 600)",
    )
    run.add_argument(
        "--sample-interval",
        type=float,
        default=0.1,
        metavar="S",
        help="GPU telemetry sampling interval in seconds (default 0.1 = 10 Hz)",
    )
    run.add_argument("--container-memory", metavar="SIZE", help="memory limit of each run's container, e.g. 16g")
    run.add_argument("--lock-dir", default=str(DEFAULT_LOCK_DIR), help="directory of the device lock files")
    run.add_argument("--no-lock", action="store_true", help="take no device locks (scheduling is done elsewhere)")
    run.add_argument("--no-wait", action="store_true", help="fail at once when a device is locked, instead of waiting")
    resume = run.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue the newest unfinished run of this study")
    resume.add_argument("--resume-dir", metavar="DIR", help="continue the study in DIR")
    breaker = run.add_mutually_exclusive_group()
    breaker.add_argument("--fail-fast", action="store_true", help="stop the study at the first failed run")
    breaker.add_argument("--no-circuit-breaker", action="store_true", help="never stop the study for failures")
    run.add_argument("--timeout", type=float, metavar="HOURS", help="wall-clock limit of the whole study")
    run.set_defaults(func=cmd_run)
    schema = sub.add_parser("schema", help="write JSON Schemas of experiment, study and result files")
    schema.add_argument("--out", default=".", help="directory to write llem-{experiment,study,result}.schema.json into")
    schema.set_defaults(func=cmd_schema)
    return parser


def cmd_schema(args: argparse.Namespace) -> int:
    from orchestrator.schema import write_schemas

    for path in write_schemas(Path(args.out)):
        print(path)
    return EXIT_OK


class _InterruptHandler:
    """First Ctrl-C / SIGTERM: stop gracefully (container removed, manifest updated).
    A second one forces an immediate exit; the next `llem run` reaps what is left."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count > 1:
            os.write(2, b"llem: forced exit; the next `llem run` removes leftover containers\n")
            os._exit(EXIT_INTERRUPTED)
        raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and args.cycles is not None and args.cycles < 1:
        parser.error(f"--cycles must be at least 1, got {args.cycles}")
    handler = _InterruptHandler()
    signal.signal(signal.SIGTERM, handler)  # SIGTERM stops a study like Ctrl-C does
    signal.signal(signal.SIGINT, handler)
    try:
        code: int = args.func(args)
        return code
    except LlemError as exc:
        print(f"llem: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("llem: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:  # a bug: keep the traceback for the report, never show it raw
        with tempfile.NamedTemporaryFile("w", prefix="llem-crash-", suffix=".txt", delete=False) as handle:
            traceback.print_exc(file=handle)
        print(f"llem: internal error (a bug); traceback saved to {handle.name}", file=sys.stderr)
        return EXIT_INTERNAL
