"""``llem``: the command line. Every error reaches the user as one line and an exit code."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import json
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from rich.console import Console

from llem_agent.contract import ENGINES, canonical_engine

from . import __version__
from .claims import DEFAULT_STALE_AFTER_S
from .container import DEFAULT_PIDS_LIMIT
from .errors import (
    EXIT_BROKEN_PIPE,
    EXIT_ENVIRONMENT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RUNS_FAILED,
    ConfigError,
    EnvironmentProblem,
    LlemError,
)
from .locks import DEFAULT_LOCK_DIR
from .plan import Plan, make_plan
from .runners import RUNNER_KINDS
from .study import DEFAULT_CYCLES, MAX_EXPERIMENTS, MAX_RUNS, ExperimentOrder, Study, load_study
from .userconfig import UserConfig, load_user_config

if TYPE_CHECKING:
    from .launcher import DockerLauncher, Launcher
    from .results import ExperimentSummary, StudySummary
    from .runner import RunnerOptions, StudyRunner

# One option, one meaning, in every command that touches study directories.
RESULTS_DIR_HELP = "where study directories are (default: the user config's output.results_dir, else ./results)"
ORDERS: tuple[ExperimentOrder, ...] = ("sequential", "interleave", "shuffle", "reverse", "latin_square")


def resolve_images(study_images: dict[str, str], overrides: Sequence[str], user: UserConfig) -> dict[str, str]:
    """Image per engine; later wins: ``llem/<engine>:<version>``, the user config, the study's
    ``runners:``, ``LLEM_IMAGE_<ENGINE>``, ``--image``."""
    images: dict[str, str] = {}
    for engine in ENGINES:
        setting = user.settings[f"images.{engine}"]
        from_env = setting.source.startswith("env ")
        images[engine] = setting.value if from_env else study_images.get(engine, setting.value)
    for item in overrides:
        engine, sep, ref = item.partition("=")
        if not sep or not ref or canonical_engine(engine) not in ENGINES:
            raise ConfigError(f"--image expects ENGINE=IMAGE with ENGINE one of {list(ENGINES)}, got {item!r}")
        images[canonical_engine(engine)] = ref
    return images


def _gpus(spec: str | None) -> tuple[tuple[int, ...], dict[int, str]]:
    """The GPU indices the study may use (``--gpus``, else every one this process was given) and their UUIDs."""
    from .devices import allowed_gpus

    return allowed_gpus(spec)


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


def runner_options(args: argparse.Namespace, study: Study, user: UserConfig) -> RunnerOptions:
    """Host settings of this invocation: CLI flags over the study's study_execution and the user config."""
    from .runner import RunnerOptions

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
    gpu_indices, gpu_uuids = _gpus(args.gpus)
    return RunnerOptions(
        results_root=Path(args.results_dir) if args.results_dir else user.results_dir,
        images=resolve_images(study.images, args.image, user),
        run_timeout_s=args.run_timeout,
        gpu_indices=gpu_indices,
        gpu_uuids=gpu_uuids,
        lock_dir=None if args.no_lock else Path(args.lock_dir),
        lock_wait_s=0.0 if args.no_wait else None,
        hf_home=user.hf_home,
        factors=user.factors(),
        baseline_cache=baseline_cache_dir(),
        engine_cache=baseline_cache_dir().parent / "engines",
        stall_timeout_s=args.stall_timeout,
        sample_interval_s=args.sample_interval,
        container_memory=container_memory(args.container_memory),
        pids_limit=args.pids_limit or None,
        max_consecutive_failures=breaker,
        circuit_breaker_cooldown_s=execution.circuit_breaker_cooldown_seconds,
        wall_clock_limit_s=None if hours is None else hours * 3600.0,
    )


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's cycle collector off while a study is expanded, planned or printed.

    Those steps allocate hundreds of thousands of objects that all stay alive (configs, runs,
    their JSON), and each allocation burst triggers collections that walk every one of them for
    nothing: a 100,000-experiment dry run spent 40% of its time there (17.5-19.5 s vs 10.1-12.7
    s with the collector off, same peak memory). Reference counting still frees what is dropped.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@_gc_paused()
def _load_plan(args: argparse.Namespace) -> tuple[Study, Plan]:
    """The study and its plan, within the size limits (a dry run also checks its models and prompt files)."""
    for flag, value in (("--max-experiments", args.max_experiments), ("--max-runs", args.max_runs)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    study = load_study(Path(args.study), name_override=args.name, max_experiments=args.max_experiments)
    cycles = args.cycles or study.execution.n_cycles or DEFAULT_CYCLES
    if len(study.experiments) * cycles > args.max_runs:
        raise ConfigError(
            f"{args.study}: {len(study.experiments):,} experiments x {cycles:,} cycles = "
            f"{len(study.experiments) * cycles:,} runs, more than the limit of {args.max_runs:,} "
            "(--max-runs raises it if you mean it)"
        )
    plan = make_plan(study, n_cycles=args.cycles, order=args.order)
    if args.dry_run:  # a real run's preflight checks these too; a dry run must not plan what cannot run
        from .datasets import resolve_dataset
        from .models import resolve_model_dir

        distinct = {
            (e.config.model, e.config.dataset.source, e.config.dataset.n_prompts): e.config for e in study.experiments
        }
        for config in distinct.values():  # once per model and prompt source, not per experiment
            resolve_model_dir(config.model, study.path.parent)
            resolve_dataset(config, study.path.parent)
    return study, plan


def container_memory(flag: str | None) -> str | None:
    """--container-memory: a size, ``none`` (no limit), or by default 90% of this host's memory,
    so that one runaway run cannot take the machine (and the study's records) down with it."""
    if flag is not None:
        return None if flag.lower() == "none" else flag
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    return f"{int(total * 0.9) // 2**20}m"


class PullLines:
    """Pull progress as a line every few seconds (terminals and Slurm logs alike)."""

    def __init__(self, console: Console, every_s: float = 3.0, why: str | None = None) -> None:
        """``why``: said with the first line (``llem run`` pulls only what this host lacks;
        ``llem pull`` pulls what it has too, since a tag may have moved)."""
        self.console, self.every_s, self.why = console, every_s, why
        self._last: dict[str, float] = {}

    def __call__(self, image: str, done_bytes: int, total_bytes: int) -> None:
        now = time.monotonic()
        if image not in self._last:
            self.console.print(f"pulling {image}" + (f" ({self.why})" if self.why else ""))
        elif now - self._last[image] < self.every_s:
            return
        self._last[image] = now
        if total_bytes:
            self.console.print(f"  {image}: {done_bytes / 2**20:,.0f} of {total_bytes / 2**20:,.0f} MiB")


def _launchers(study: Study, args: argparse.Namespace, user: UserConfig) -> tuple[dict[str, Launcher], DockerLauncher]:
    """The launcher of each engine of ``study`` (runner precedence: 002), and the Docker one."""
    from .launcher import DockerLauncher
    from .local import LocalLauncher
    from .runners import resolve_runners

    engines = {e.config.engine for e in study.experiments}
    choices = resolve_runners(engines, study=study.runners, cli=args.runner, user=user.runners())
    # Connects on first use: a study run entirely by the local runner needs no Docker.
    on_pull = None if getattr(args, "no_pull", False) else PullLines(_console(stderr=True), why="not on this host")
    docker = DockerLauncher(contract_cache=baseline_cache_dir().parent / "contracts", on_pull=on_pull)
    return {
        engine: LocalLauncher(engine, chosen_by=choice.source) if choice.kind == "local" else docker
        for engine, choice in choices.items()
    }, docker


def _prepare_host(runner: StudyRunner, launchers: dict[str, Launcher], docker: DockerLauncher) -> None:
    """Checks, leftovers of dead llem processes removed, shared caches made: before any run here."""
    from .local import LocalLauncher
    from .reaper import reap_orphans

    runner.preflight()
    for engine, launcher in sorted(launchers.items()):
        if isinstance(launcher, LocalLauncher):
            _console(stderr=True).print(
                f"{engine}: local runner ({launcher.chosen_by}); the agent runs as a process on this host"
            )
    if any(launcher is docker for launcher in launchers.values()):
        for name in reap_orphans(docker):
            _console(stderr=True).print(f"removed orphan container {name} (its llem process is gone)")
    options = runner.options
    ensure_shared_dirs([options.hf_home, options.baseline_cache, options.engine_cache])


def open_study(args: argparse.Namespace, runner: StudyRunner, describe: bool = True) -> Path:
    """The study directory this invocation runs: resumed (--resume, --resume-dir) or new."""
    from .runner import newest_unfinished

    if args.resume or args.resume_dir:
        root, name = runner.options.results_root, runner.plan.study.name
        study_dir = Path(args.resume_dir) if args.resume_dir else newest_unfinished(root, name)
        return runner.resume(study_dir, describe=describe)
    return runner.prepare(describe=describe)


def cmd_run(args: argparse.Namespace) -> int:
    from .cli_cluster import _print_slurm_script, _run_parallel, _slots, _submit_slurm
    from .display import ProgressDisplay, print_results
    from .results import aggregate
    from .runner import StudyRunner

    out, err = _console(), _console(stderr=True)
    if args.json and not args.dry_run:
        raise ConfigError("--json goes with --dry-run")
    if args.wait and args.executor != "slurm":
        raise ConfigError("--wait goes with --executor slurm")
    if args.parallel is not None and args.executor == "slurm":
        raise ConfigError("--parallel runs workers on this host; a Slurm job array's workers are --slurm-tasks N")
    study, plan = _load_plan(args)
    if args.dry_run and args.executor == "slurm":
        return _print_slurm_script(args, study, plan)
    if args.dry_run:
        from .devices import nvml_gpus
        from .dryrun import print_json, print_text

        allowed = set(_gpus(args.gpus)[0])  # the GPUs a run of this study would be given
        gpus = [g for g in nvml_gpus()[0] if g.index in allowed]
        with _gc_paused():
            if args.json:
                print_json(plan, gpus)
            else:
                print_text(plan, out, gpus)
        return EXIT_OK
    user = load_user_config()
    options = runner_options(args, study, user)
    for skipped in study.skipped:
        err.print(f"[yellow]skipping[/] grid point {skipped.index + 1}: {skipped.reason}")
    launchers, docker = _launchers(study, args, user)
    runner = StudyRunner(plan, options, launchers, events=_NoEvents())
    if args.executor == "slurm":
        return _submit_slurm(args, study, plan, runner, user)
    slots = _slots(args, study, options)
    _prepare_host(runner, launchers, docker)
    if len(slots) > 1:
        return _run_parallel(args, study, plan, runner, slots)
    study_dir = open_study(args, runner)
    if args.resume or args.resume_dir:
        done = runner.completed_count()
        err.print(f"resuming study {study.name} in {study_dir}: {done} of {len(plan.runs)} runs completed, "
                  f"{len(plan.runs) - done} to run")  # fmt: skip
    else:
        err.print(f"study {study.name}: {plural(len(plan.runs), 'run')} -> {study_dir}")
    with ProgressDisplay(plan, err, done=runner.completed_count()) as display:
        runner.events = display
        outcomes = runner.execute()
    summary = runner.summary or aggregate(study_dir, options.factors)
    print_results(summary, out)
    failed = [o for o in outcomes if o.entry.status != "completed"]
    out.print(f"{len(outcomes) - len(failed)}/{len(outcomes)} runs completed; results in {study_dir}")
    return EXIT_RUNS_FAILED if failed else EXIT_OK


class _NoEvents:
    def run_started(self, *args: object) -> None: ...

    def run_finished(self, *args: object) -> None: ...

    def waiting_for_devices(self, *args: object) -> None: ...

    def pausing(self, *args: object) -> None: ...

    def run_phase(self, *args: object) -> None: ...


def _host_options(parser: argparse.ArgumentParser) -> None:
    """Options of where and how runs execute: ``llem run`` and ``llem worker`` share them."""
    parser.add_argument(
        "--no-pull", action="store_true", help="refuse an image that is not on this host instead of pulling it"
    )
    parser.add_argument("--image", action="append", default=[], metavar="ENGINE=IMAGE", help="image for an engine")
    parser.add_argument(
        "--runner",
        choices=RUNNER_KINDS,
        help="where every engine's runs execute: docker (one container per run) or local (a host process); "
        "LLEM_RUNNER_<ENGINE> and the user config's runners: win over it, it wins over the study's runners:",
    )
    parser.add_argument(
        "--gpus",
        help="GPUs the study may use, by NVML index or UUID, e.g. 0,1 or GPU-5c1e... (default: every GPU "
        "this process was given: CUDA_VISIBLE_DEVICES, else all NVML sees)",
    )
    parser.add_argument("--run-timeout", type=float, default=3600.0, metavar="S", help="per-run timeout in seconds")
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="kill a run whose agent shows no progress for S seconds while measuring (default 600)",
    )
    parser.add_argument(
        "--sample-interval",
        type=float,
        default=0.1,
        metavar="S",
        help="GPU telemetry sampling interval in seconds (default 0.1 = 10 Hz)",
    )
    parser.add_argument(
        "--container-memory", metavar="SIZE",
        help="memory limit of each run's container, e.g. 16g, or none (default: 90%% of this host's memory)",
    )  # fmt: skip
    parser.add_argument(
        "--pids-limit", type=int, default=DEFAULT_PIDS_LIMIT, metavar="N",
        help=f"processes and threads per run container, 0 for no limit (default {DEFAULT_PIDS_LIMIT})",
    )  # fmt: skip
    parser.add_argument("--lock-dir", default=str(DEFAULT_LOCK_DIR), help="directory of the device lock files")
    parser.add_argument("--no-lock", action="store_true", help="take no device locks (scheduling is done elsewhere)")
    parser.add_argument(
        "--no-wait", action="store_true", help="fail at once when a device is locked, instead of waiting"
    )
    breaker = parser.add_mutually_exclusive_group()
    breaker.add_argument("--fail-fast", action="store_true", help="stop the study at the first failed run")
    breaker.add_argument("--no-circuit-breaker", action="store_true", help="never stop the study for failures")
    parser.add_argument("--timeout", type=float, metavar="HOURS", help="wall-clock limit of the whole study")


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
    run.add_argument("--results-dir", metavar="DIR", help=RESULTS_DIR_HELP)
    _host_options(run)
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
        "--executor", choices=("process", "slurm"), default="process",
        help="who runs the study: this process (default), or a Slurm job array of `llem worker` tasks",
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
    _host_options(worker)
    worker.set_defaults(func=cmd_worker)
    pull = sub.add_parser("pull", help="pull the images a study needs (and check they speak this llem's contract)")
    pull.add_argument("study", help="study or experiment YAML file")
    pull.add_argument("--image", action="append", default=[], metavar="ENGINE=IMAGE", help="image for an engine")
    pull.add_argument("--runner", choices=RUNNER_KINDS, help="as for llem run: engines run locally need no image")
    pull.set_defaults(func=cmd_pull, name=None, max_experiments=MAX_EXPERIMENTS, max_runs=MAX_RUNS, dry_run=False,
                      cycles=None, order=None)  # fmt: skip
    k8s = sub.add_parser(
        "k8s", help="plan a study onto shared storage and write the Kubernetes Indexed Jobs that run it"
    )
    k8s.add_argument("study", help="study or experiment YAML file")
    k8s.add_argument("--out", required=True, metavar="DIR", help="where to write the Job manifests")
    k8s.add_argument("--results-dir", metavar="DIR", help="where the study directory goes: the volume the pods mount")
    k8s.add_argument("--pvc", required=True, metavar="NAME", help="PersistentVolumeClaim holding --results-dir")
    k8s.add_argument(
        "--mount-path", metavar="PATH", help="where pods mount it (default: --results-dir's absolute path)"
    )
    k8s.add_argument("--model-cache-pvc", metavar="NAME", help="PersistentVolumeClaim of a shared Hugging Face cache")
    k8s.add_argument("--hf-token-secret", metavar="NAME", help="a Secret whose key HF_TOKEN the runs may download with")
    k8s.add_argument("--namespace", metavar="NS", help="metadata.namespace of the Jobs")
    k8s.add_argument("--pods", type=int, metavar="N", help="pods per engine; default: one per run, at most 8")
    k8s.add_argument("--cpu", action="store_true", help="CPU pods: no nvidia.com/gpu limits")
    k8s.add_argument("--cpus", default="4", metavar="N", help="CPU each pod requests = its limit (default 4)")
    k8s.add_argument("--memory", default="16Gi", metavar="SIZE", help="memory each pod requests = its limit (16Gi)")
    k8s.add_argument(
        "--timeout", type=float, metavar="HOURS",
        help="activeDeadlineSeconds of the Jobs (default: study_execution.wall_clock_timeout_hours, else none)",
    )  # fmt: skip
    k8s.add_argument(
        "--image", action="append", default=[], metavar="ENGINE=IMAGE",
        help="the pods' image for an engine (default: the engine's worker image, <image>-worker: llem inside)",
    )  # fmt: skip
    k8s.add_argument("--cycles", type=int, help="number of cycles (default: study_execution.n_cycles, else 3)")
    k8s.add_argument("--order", choices=ORDERS, help="experiment order (default: study_execution, else shuffle)")
    k8s.set_defaults(func=cmd_k8s, name=None, max_experiments=MAX_EXPERIMENTS, max_runs=MAX_RUNS, dry_run=False)
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
    config = sub.add_parser("config", help="show the effective user configuration and where each value came from")
    config.add_argument("--json", action="store_true", help="print it as JSON")
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


def plural(n: int, word: str) -> str:
    """``1 run``, ``2 runs``, ``1,000 runs``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _console(stderr: bool = False) -> Console:
    # Pipes and CI logs get a wide, fixed width instead of rich's 80-column fallback, and lines
    # that are never wrapped: a long path or error stays on one line for copy and grep.
    tty = (sys.stderr if stderr else sys.stdout).isatty()
    return Console(stderr=stderr, width=None if tty else 150, soft_wrap=not tty)


def study_dir_arg(arg: str | None, user: UserConfig, results_dir: str | None = None) -> Path:
    """A study directory, or a results directory whose newest study is meant (default:
    --results-dir, else the user config's output.results_dir)."""
    from .manifest import MANIFEST_FILE
    from .results import newest_study

    path = Path(arg) if arg else Path(results_dir) if results_dir else user.results_dir
    if (path / MANIFEST_FILE).exists():
        return path
    if not path.is_dir():
        raise ConfigError(f"{path}: no such study or results directory")
    return newest_study(path)


def _match_param(key: str, swept: Sequence[str], params: dict[str, object]) -> str:
    if key in params or key in swept:
        return key
    matches = sorted({k for k in [*swept, *params] if k.endswith("." + key)})
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ConfigError(f"--where {key}: ambiguous, matches {matches}")
    from .validation import did_you_mean

    raise ConfigError(f"--where: unknown parameter '{key}'{did_you_mean(key, [*swept, *params])}")


def _summary(args: argparse.Namespace) -> StudySummary:
    """The summary of the study ``args.dir`` names, aggregated now (and written into it)."""
    from .results import summarise

    user = load_user_config()
    return summarise(study_dir_arg(args.dir, user, args.results_dir), user.factors())


def cmd_results(args: argparse.Namespace) -> int:
    from .display import print_results
    from .results import METRIC_BY_NAME

    summary = _summary(args)
    if args.json:
        print(json.dumps(summary.as_json(), indent=2))
        return EXIT_OK
    rows = list(summary.experiments)
    for condition in args.where:
        key, op, value = _split_condition(condition)
        for_key = _match_param(key, summary.swept, rows[0].params if rows else {})
        rows = [e for e in rows if (_param_text(e.params.get(for_key)) == value) == (op == "=")]
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    for name in metrics or []:
        if name not in METRIC_BY_NAME:
            from .validation import did_you_mean

            raise ConfigError(f"--metrics: unknown metric '{name}'{did_you_mean(name, list(METRIC_BY_NAME))}")
    if args.sort:
        rows = _sorted(rows, args.sort, summary.swept, reverse=args.reverse)
    out = _console()
    print_results(summary, out, rows, metrics)
    return EXIT_OK


def _split_condition(condition: str) -> tuple[str, str, str]:
    for op in ("!=", "="):
        key, sep, value = condition.partition(op)
        if sep and key.strip():
            return key.strip(), op, value.strip()
    raise ConfigError(f"--where expects KEY=VALUE or KEY!=VALUE, got {condition!r}")


def _param_text(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def _sorted(rows: list[ExperimentSummary], key: str, swept: Sequence[str], reverse: bool) -> list[ExperimentSummary]:
    """Best first for a metric (its direction), ascending for a parameter; missing values last."""
    from .results import METRIC_BY_NAME

    metric = METRIC_BY_NAME.get(key)
    if metric is not None:
        descending = (metric.better == "higher") != reverse
        present = [e for e in rows if e.stats[key].mean is not None]
        present.sort(key=lambda e: e.stats[key].mean or 0.0, reverse=descending)
        return present + [e for e in rows if e.stats[key].mean is None]
    name = _match_param(key, swept, rows[0].params if rows else {}) if rows else key
    return sorted(rows, key=lambda e: (e.params.get(name) is None, str(e.params.get(name))), reverse=reverse)


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    summary = _summary(args)
    out = Path(args.out) if args.out else None
    try:
        path = write_report(summary, out)
    except OSError as exc:
        target = out or summary.study_dir
        raise EnvironmentProblem(f"cannot write the report to {target}: {exc.strerror or exc}") from None
    print(path)
    return EXIT_OK


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
    out = _console()
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

    user = load_user_config()
    if args.json:
        data = {key: {"value": s.value, "source": s.source} for key, s in user.settings.items()}
        print(json.dumps({"config_file": str(user.path), "found": user.file_found, "settings": data}, indent=2))
        return EXIT_OK
    out = _console()
    state = "" if user.file_found else ": not found, so defaults apply (create it to change them)"
    out.print(f"user config {user.path}{state}")
    table = Table(title="effective configuration")
    for column in ("key", "value", "source"):
        table.add_column(column)
    for key, setting in user.settings.items():
        table.add_row(key, "–" if setting.value is None else str(setting.value), setting.source)
    out.print(table)
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
