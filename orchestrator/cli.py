"""``llem``: the command line. Every error reaches the user as one line and an exit code."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from rich.console import Console

from llem_agent.contract import ENGINES, canonical_engine

from . import __version__
from .claims import DEFAULT_STALE_AFTER_S
from .cli_flags import K8S_FLAGS, host_options, k8s_flags, options_from_args
from .cli_results import cmd_report, cmd_results
from .display import PullLines, console
from .errors import (
    EXIT_BROKEN_PIPE,
    EXIT_ENVIRONMENT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RUNS_FAILED,
    ConfigError,
    LlemError,
)
from .execution import NoEvents
from .executors import EXECUTORS
from .options import Options
from .plan import Plan, PlannedRun
from .profiles import PROFILES
from .runners import RUNNER_KINDS
from .session import gc_paused, host_settings, load_plan, make_runners, prepare_host
from .simulation import SIMULATE_ENV, parse_spec
from .study import MAX_EXPERIMENTS, MAX_RUNS, ExperimentOrder
from .userconfig import load_user_config
from .words import plural

if TYPE_CHECKING:
    from .display import ProgressDisplay
    from .execution import RunOutcome

# One option, one meaning, in every command that touches study directories.
RESULTS_DIR_HELP = "where study directories are (default: the user config's output.results_dir, else ./results)"
ORDERS: tuple[ExperimentOrder, ...] = ("sequential", "interleave", "shuffle", "reverse", "latin_square")


def cmd_run(args: argparse.Namespace) -> int:
    """``llem run``: flags to options, the study to whoever runs it (this process through the
    Python API, parallel workers, a Slurm job array), the results printed."""
    from .api import run_plan
    from .cli_cluster import _print_slurm_script, _slots, run_elsewhere
    from .display import print_results

    out, err = console(), console(stderr=True)
    _check_flags(args)
    if args.executor == "k8s":
        from .cli_cluster import cmd_k8s

        return cmd_k8s(args)
    options = options_from_args(args)
    study, plan = load_plan(Path(args.study), options, check_files=args.dry_run)
    if options.profile is not None:
        err.print(PROFILES[options.profile].describe(), markup=False, highlight=False)
    if args.dry_run and args.executor == "slurm":
        return _print_slurm_script(args, study, plan)
    if args.dry_run:
        return _print_dry_run(plan, options, out, as_json=args.json)
    user = load_user_config()
    host = host_settings(options, study, user)
    slots = [] if args.executor == "slurm" else _slots(args, study, host)
    if args.executor in (None, "process") and len(slots) == 1:  # this process runs it: the Python API's path
        with _Progress(err) as progress:
            done = run_plan(study, plan, options, progress, host=(user, host))
        print_results(done.summary, out)
        failed = [r for r in done.runs if r.status != "completed"]
        out.print(f"{len(done.runs) - len(failed)}/{len(done.runs)} runs completed; results in {done.directory}")
        return EXIT_RUNS_FAILED if failed else EXIT_OK
    from .studyloop import StudyLoop

    for skipped in study.skipped:
        err.print(f"[yellow]skipping[/] {skipped.describe()}")
    for warning in study.warnings:
        err.print(f"[yellow]warning[/] {warning}")
    engines, docker = make_runners(study, options, user, on_pull=PullLines(err, why="not on this host"))
    loop = StudyLoop(plan, host, engines, events=NoEvents())
    if args.executor != "slurm":
        prepare_host(loop, engines, docker, lambda text: err.print(text, markup=False, highlight=False))
    return run_elsewhere(args, options, loop, user, slots)


def _check_flags(args: argparse.Namespace) -> None:
    """``llem run``'s flags that contradict one another, or the executor: one line each."""
    if args.json and not args.dry_run:
        raise ConfigError("--json goes with --dry-run")
    if args.wait and args.executor != "slurm":
        raise ConfigError("--wait goes with --executor slurm")
    if args.parallel is not None and args.executor == "slurm":
        raise ConfigError("--parallel runs workers on this host; a Slurm job array's workers are --slurm-tasks N")
    given = [f"--{name.replace('_', '-')}" for name in K8S_FLAGS if getattr(args, name) is not None]
    if args.executor == "k8s":
        if args.parallel is not None:
            raise ConfigError("--parallel runs workers on this host; the Jobs' pods per engine are --pods N")
        if args.dry_run:
            raise ConfigError("--dry-run prints the plan; --executor k8s writes the Jobs (run it without --dry-run)")
    elif given:
        raise ConfigError(f"{given[0]} goes with --executor k8s (the Jobs it writes)")
    if args.executor == "process" and args.parallel not in (None, "1"):
        raise ConfigError(f"--executor process runs one run at a time in this process; --parallel {args.parallel} "
                          "is --executor parallel")  # fmt: skip


def _print_dry_run(plan: Plan, options: Options, out: Console, as_json: bool) -> int:
    from .devices import allowed_gpus, nvml_gpus
    from .dryrun import print_json, print_text

    allowed = set(allowed_gpus(options.gpus)[0])  # the GPUs a run of this study would be given
    gpus = [g for g in nvml_gpus()[0] if g.index in allowed]
    with gc_paused():
        if as_json:
            print_json(plan, gpus)
        else:
            print_text(plan, out, gpus)
    return EXIT_OK


class _Progress:
    """The Python API's events on a terminal: its lines on stderr, and a progress bar while runs go."""

    def __init__(self, err: Console) -> None:
        self.err = err
        self.pulling = PullLines(err, why="not on this host")
        self._display: ProgressDisplay | None = None

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._display is not None:
            self._display.__exit__(None, None, None)

    def note(self, text: str) -> None:
        self.err.print(text, markup=False, highlight=False)

    def study_started(self, plan: Plan, study_dir: Path, completed: int, resumed: bool) -> None:
        from .display import ProgressDisplay

        name, total = plan.study.name, len(plan.runs)
        if resumed:
            self.err.print(f"resuming study {name} in {study_dir}: {completed} of {plural(total, 'run')} completed, "
                           f"{total - completed} to run")  # fmt: skip
        else:
            self.err.print(f"study {name}: {plural(total, 'run')} -> {study_dir}")
        self._display = ProgressDisplay(plan, self.err, done=completed).__enter__()

    def run_started(self, run: PlannedRun, position: int, total: int) -> None:
        if self._display is not None:
            self._display.run_started(run, position, total)

    def run_phase(self, run: PlannedRun, phase: str, detail: str) -> None:
        if self._display is not None:
            self._display.run_phase(run, phase, detail)

    def run_finished(self, outcome: RunOutcome) -> None:
        if self._display is not None:
            self._display.run_finished(outcome)

    def waiting_for_devices(self, names: list[str]) -> None:
        if self._display is not None:
            self._display.waiting_for_devices(names)

    def pausing(self, seconds: float) -> None:
        if self._display is not None:
            self._display.pausing(seconds)


def build_parser() -> argparse.ArgumentParser:  # noqa: PLR0915 - one flat list of every option
    from .cli_cluster import cmd_k8s, cmd_pull, cmd_worker

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
        "--profile", choices=sorted(PROFILES),
        help="execution-protocol shorthand: " + "; ".join(p.describe() for p in PROFILES.values())
        + " (--cycles and --order win over it)",
    )  # fmt: skip
    run.add_argument("--results-dir", metavar="DIR", help=RESULTS_DIR_HELP)
    host_options(run)
    resume = run.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue the newest unfinished run of this study")
    resume.add_argument("--resume-dir", metavar="DIR", help="continue the study in DIR")
    run.add_argument(
        "--max-experiments", type=int, default=MAX_EXPERIMENTS, metavar="N",
        help=f"refuse a study that expands to more experiments (default {MAX_EXPERIMENTS:,})",
    )  # fmt: skip
    run.add_argument(
        "--max-runs", type=int, default=MAX_RUNS, metavar="N",
        help=f"refuse a study of more runs, experiments x cycles (default {MAX_RUNS:,})",
    )  # fmt: skip
    run.add_argument(
        "--executor", choices=EXECUTORS,
        help="who runs the study: this process (process: the default), `llem worker` processes on this host "
        "(parallel: the default with --parallel N), a Slurm job array of them (slurm), Kubernetes Indexed Jobs "
        "of them (k8s: written to --out for kubectl, as llem k8s does)",
    )  # fmt: skip
    run.add_argument(
        "--parallel", metavar="N|auto",
        help="runs at once on this host, each on its own GPUs (on CPU: cores); auto: as many as the GPUs allow "
        "(default: study_execution.max_parallel_runs, else 1)",
    )  # fmt: skip
    run.add_argument("--wait", action="store_true", help="with --executor slurm: follow the job until it ends")
    run.add_argument(
        "--slurm-partition", metavar="NAME", help="sbatch --partition (default: user config slurm.partition)"
    )
    run.add_argument("--slurm-account", metavar="NAME", help="sbatch --account (default: user config slurm.account)")
    run.add_argument("--slurm-time", metavar="TIME", help="sbatch --time per task, e.g. 04:00:00 (default: slurm.time)")
    run.add_argument(
        "--slurm-tasks", type=int, metavar="N", help="array tasks (workers); default: one per pending run, at most 8"
    )
    run.add_argument(
        "--slurm-gpus", type=int, metavar="N",
        help="GPUs (GRES) per array task; default: the most one run needs, when the partition has GPUs (sinfo)",
    )  # fmt: skip
    run.add_argument(
        "--sbatch-line", action="append", default=[], metavar="LINE",
        help="an extra #SBATCH line, e.g. '--constraint=h100' (repeatable; after the user config's slurm.sbatch_lines)",
    )  # fmt: skip
    k8s_flags(run.add_argument_group("with --executor k8s (as llem k8s)"), required=False)
    run.set_defaults(func=cmd_run)
    worker = sub.add_parser(
        "worker", help="run a study's pending runs one by one, beside other workers (Slurm tasks, pods)"
    )
    worker.add_argument("dir", help="the study directory (written by llem run --executor slurm, or llem k8s)")
    worker.add_argument("--worker-id", metavar="ID", help="this worker's name in claims (default: host:pid)")
    worker.add_argument("--cpuset", metavar="LIST", help="CPU cores this worker's CPU runs are pinned to, e.g. 0-3,8")
    worker.add_argument("--engine", metavar="ENGINE", help="run only this engine's runs (a pod's image has one engine)")
    worker.add_argument(
        "--stale-after", type=float, default=DEFAULT_STALE_AFTER_S, metavar="S",
        help=f"a claim not refreshed for S seconds is a dead worker's, and its run is claimed again "
        f"(default {DEFAULT_STALE_AFTER_S:.0f})",
    )  # fmt: skip
    host_options(worker)
    worker.set_defaults(func=cmd_worker)
    pull = sub.add_parser("pull", help="pull the images a study needs (and check they speak this llem's contract)")
    pull.add_argument("study", help="study or experiment YAML file")
    pull.add_argument("--image", action="append", default=[], metavar="ENGINE=IMAGE", help="image for an engine")
    pull.add_argument("--runner", choices=RUNNER_KINDS, help="as for llem run: engines run locally need no image")
    pull.set_defaults(func=cmd_pull, name=None, max_experiments=MAX_EXPERIMENTS, max_runs=MAX_RUNS, dry_run=False,
                      cycles=None, order=None)  # fmt: skip
    k8s = sub.add_parser(
        "k8s", help="plan a study onto shared storage and write the Kubernetes Indexed Jobs that run it "
        "(llem run --executor k8s with the same flags)",
    )  # fmt: skip
    k8s.add_argument("study", help="study or experiment YAML file")
    k8s.add_argument("--results-dir", metavar="DIR", help="where the study directory goes: the volume the pods mount")
    k8s_flags(k8s, required=True)
    k8s.add_argument(
        "--timeout", type=float, metavar="HOURS",
        help="activeDeadlineSeconds of the Jobs (default: study_execution.wall_clock_timeout_hours, else every run "
        "to its --run-timeout after the longest pause and 10 minutes more, one after another)",
    )  # fmt: skip
    k8s.add_argument(
        "--image", action="append", default=[], metavar="ENGINE=IMAGE",
        help="the pods' image for an engine (default: the engine's worker image, <image>-worker: llem inside)",
    )  # fmt: skip
    k8s.add_argument("--cycles", type=int, help="number of cycles (default: study_execution.n_cycles, else 3)")
    k8s.add_argument("--order", choices=ORDERS, help="experiment order (default: study_execution, else shuffle)")
    k8s.set_defaults(func=cmd_k8s, name=None, max_experiments=MAX_EXPERIMENTS, max_runs=MAX_RUNS, dry_run=False,
                     executor="k8s", resume=False, resume_dir=None)  # fmt: skip
    results = sub.add_parser("results", help="statistics across cycles of a study, as a table (writes summary files)")
    results.add_argument("dir", nargs="?", help="study directory, or a results directory (newest study)")
    results.add_argument("--sort", metavar="KEY", help="sort by a metric (best first) or a swept parameter")
    results.add_argument("--reverse", action="store_true", help="reverse the --sort order")
    results.add_argument(
        "--where", action="append", default=[], metavar="PARAM=VALUE", help="keep experiments whose parameter "
        "matches (also PARAM!=VALUE; repeatable; a unique suffix such as batch_size names a parameter)",
    )  # fmt: skip
    results.add_argument("--metrics", metavar="A,B", help="metric columns to show (names as in summary.json)")
    results.add_argument("--json", action="store_true", help="print summary.json instead of the table")
    results.add_argument("--results-dir", metavar="DIR", help=RESULTS_DIR_HELP)
    results.set_defaults(func=cmd_results)
    report = sub.add_parser("report", help="write a self-contained HTML report of a study (plots, warnings)")
    report.add_argument("dir", nargs="?", help="study directory, or a results directory (newest study)")
    report.add_argument("--out", metavar="FILE", help="where to write it (default: <study>/report.html)")
    report.add_argument("--results-dir", metavar="DIR", help=RESULTS_DIR_HELP)
    report.set_defaults(func=cmd_report)
    doctor = sub.add_parser("doctor", help="check Docker, GPUs, the engine images and disk space; say how to fix")
    doctor.add_argument(
        "--engine", action="append", default=[], metavar="ENGINE",
        help="an engine whose image must be present (repeatable; default: pytorch); others only warn",
    )  # fmt: skip
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")
    doctor.add_argument("--results-dir", metavar="DIR", help=RESULTS_DIR_HELP)
    doctor.set_defaults(func=cmd_doctor)
    config = sub.add_parser(
        "config", help="show the effective user configuration, where each value came from, and the engines here"
    )
    config.add_argument("--json", action="store_true", help="print it as JSON")
    config.add_argument(
        "--verbose", action="store_true", help="also the detailed environment: host, OS, CPU, memory, GPUs, Docker"
    )
    config.set_defaults(func=cmd_config)
    schema = sub.add_parser("schema", help="JSON Schemas of experiment, study and result files")
    schema.add_argument(
        "--out", metavar="DIR",
        help="write llem-{experiment,study,result}.schema.json into DIR (default: print them as one JSON object)",
    )  # fmt: skip
    schema.set_defaults(func=cmd_schema)
    # No abbreviations: `--name` must never be taken for `--namespace`, nor `--res` for whatever
    # flag it prefixes today (and another tomorrow).
    for each in (parser, *sub.choices.values()):
        each.allow_abbrev = False
    return parser


def cmd_doctor(args: argparse.Namespace) -> int:
    from rich.table import Table

    from .doctor import run_checks

    engines = [canonical_engine(e) for e in args.engine] or ["pytorch"]
    for engine in engines:
        if engine not in ENGINES:
            raise ConfigError(f"--engine: unknown engine '{engine}' (one of {list(ENGINES)})")
    checks = run_checks(engines, results_dir=Path(args.results_dir) if args.results_dir else None)
    failed = [c for c in checks if c.status == "fail"]
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [c.as_dict() for c in checks]}, indent=2))
        return EXIT_ENVIRONMENT if failed else EXIT_OK
    out = console()
    table = Table(title="llem doctor")
    for column in ("", "check", "detail"):
        table.add_column(column)
    marks = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[red]✗[/]"}
    for check in checks:
        table.add_row(marks[check.status], check.name, check.detail)
    out.print(table)
    for check in checks:
        if check.fix and check.status != "ok":
            out.print(f"{marks[check.status]} {check.name}: {check.fix}")
    out.print(f"{len(failed)} check(s) failed" if failed else "ready to run studies")
    return EXIT_ENVIRONMENT if failed else EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    from rich.table import Table

    from .doctor import engine_status, environment

    user = load_user_config()
    engines = engine_status(user.images())
    facts = environment() if args.verbose else None
    if args.json:
        data = {key: {"value": s.value, "source": s.source} for key, s in user.settings.items()}
        doc = {"config_file": str(user.path), "found": user.file_found, "settings": data,
               "engines": [e.as_dict() for e in engines]}  # fmt: skip
        print(json.dumps(doc | ({"environment": facts} if facts is not None else {}), indent=2))
        return EXIT_OK
    out = console()
    state = "" if user.file_found else ": not found, so defaults apply (create it to change them)"
    out.print(f"user config {user.path}{state}")
    table = Table(title="effective configuration")
    for column in ("key", "value", "source"):
        table.add_column(column)
    for key, setting in user.settings.items():
        table.add_row(key, "–" if setting.value is None else str(setting.value), setting.source)
    out.print(table)
    installed = Table(title="engines on this host")
    for column in ("engine", "image", "docker runner", "local runner"):
        installed.add_column(column)
    for e in engines:
        image = {True: "image here", False: "not here (llem pull)", None: "Docker not answering"}[e.image_here]
        installed.add_row(e.engine, e.image, image, "importable" if e.importable else "not installed")
    out.print(installed)
    if facts is not None:
        env = Table(title="environment")
        for column in ("fact", "value"):
            env.add_column(column)
        for key, value in facts.items():
            env.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
        out.print(env)
    carbon = user.value("measurement.carbon_intensity_gco2_kwh")
    if carbon is None:
        out.print("CO2e is not computed: set measurement.carbon_intensity_gco2_kwh or LLEM_CARBON_INTENSITY (gCO2/kWh)")
    elif carbon < 1:
        out.print(f"[yellow]warning[/] carbon intensity {carbon} gCO2/kWh is implausibly low: the unit is g, not kg")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from .schema import all_schemas, write_schemas

    if args.out is None:
        print(json.dumps(all_schemas(), indent=2))
        return EXIT_OK
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


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that nothing more (nor Python's own flush at exit) fails on
    the pipe whose reader left."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and args.cycles is not None and args.cycles < 1:
        parser.error(f"--cycles must be at least 1, got {args.cycles}")
    handler = _InterruptHandler()
    signal.signal(signal.SIGTERM, handler)  # SIGTERM stops a study like Ctrl-C does
    signal.signal(signal.SIGINT, handler)
    try:
        if getattr(args, "simulate_gpus", None) is not None:
            parse_spec(args.simulate_gpus, "--simulate-gpus")  # refused in one line before anything runs
            os.environ[SIMULATE_ENV] = args.simulate_gpus  # for every seam of this command, and its workers
        code: int = args.func(args)
        return code
    except LlemError as exc:
        print(f"llem: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("llem: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `llem ... | head`: the reader has what it wanted
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except Exception:  # a bug: keep the traceback for the report, never show it raw
        with tempfile.NamedTemporaryFile("w", prefix="llem-crash-", suffix=".txt", delete=False) as handle:
            traceback.print_exc(file=handle)
        print(f"llem: internal error (a bug); traceback saved to {handle.name}", file=sys.stderr)
        return EXIT_INTERNAL


def run() -> NoReturn:
    """The ``llem`` command: :func:`main`, then exit without tearing the interpreter down.

    When main returns, everything llem writes is written and closed. What is left is the
    libraries' exit handlers (run here) and freeing every module and object one by one, which
    with pydantic, the docker SDK, numpy and pyarrow loaded costs 0.1-0.2 s of every command.
    A thread that is still running (none is, when main returns normally) gets the usual exit.
    """
    code = main()
    atexit._run_exitfuncs()
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if any(t.is_alive() for t in others):
        sys.exit(code)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = code or EXIT_BROKEN_PIPE
    with contextlib.suppress(OSError):
        sys.stderr.flush()
    os._exit(code)
