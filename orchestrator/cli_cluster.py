"""The commands and parts of ``llem run`` that hand a study to several workers: parallel
slots on this host, a Slurm job array, Kubernetes Indexed Jobs, and ``llem worker`` itself;
and ``llem pull``."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from llem_agent.contract import canonical_engine

from .cli_flags import host_options, options_from_args
from .display import PullLines, console
from .errors import EXIT_OK, EXIT_RUNS_FAILED, ConfigError, EnvironmentProblem
from .execution import NoEvents
from .plan import Plan, make_plan
from .session import host_settings, load_plan, make_runners, prepare_host, resolve_images, results_root
from .simulation import SIMULATE_ENV
from .study import Study, load_planned_study
from .studydir import StudyDir
from .userconfig import UserConfig, load_user_config
from .words import plural

if TYPE_CHECKING:
    from .execution import HostSettings, RunOutcome
    from .options import Options
    from .parallel import Slot
    from .plan import PlannedRun
    from .runner import Runner
    from .slurm import SlurmOptions
    from .studyloop import StudyLoop


def _say(text: str) -> None:
    console(stderr=True).print(text, markup=False, highlight=False)


def _slots(args: argparse.Namespace, study: Study, options: HostSettings) -> list[Slot]:
    """The parallel slots of this run (one: no parallelism)."""
    from .devices import devices_needed
    from .parallel import Slot, parse_parallel, plan_slots

    wanted = args.parallel if args.parallel is not None else study.execution.max_parallel_runs
    if wanted is None and args.executor == "parallel":
        wanted = "auto"  # --executor parallel without a count: as many as the devices allow
    if wanted is None:
        return [Slot(options.gpu_indices, ())]  # one at a time, in this process
    need = max((devices_needed(e.config) for e in study.experiments), default=1)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    return plan_slots(parse_parallel(wanted), options.gpu_indices, need, cores)


def run_elsewhere(
    args: argparse.Namespace, options: Options, loop: StudyLoop, user: UserConfig, slots: list[Slot]
) -> int:
    """``llem run`` with workers elsewhere than this process: parallel ``llem worker`` processes
    on this host, or a Slurm job array of them (executors.py); the results printed as they end."""
    from .display import print_results
    from .executors import Followed, Parallel, Slurm, exit_code
    from .results import aggregate, summarise
    from .slurm import llem_command

    out, err = console(), console(stderr=True)

    def progress(done: int, total: int) -> None:
        err.print(f"{done}/{total} runs completed")

    executor: Parallel | Slurm
    if args.executor == "slurm":
        executor = Slurm(_slurm_options(args, user), _worker_flags(args), args.wait, _say, progress)
    else:
        executor = Parallel(slots, llem_command(), _worker_flags(args), _say, progress)
    study_dir = executor.submit(loop, options)
    followed: Followed = executor.follow(loop, study_dir)
    if isinstance(executor, Slurm):
        if executor.job is None:
            out.print(f"nothing left to run in {study_dir}")
            return EXIT_OK
        if not args.wait:
            out.print(followed.detail)
            return EXIT_OK
        print_results(aggregate(study_dir, loop.options.factors), out)
        if followed.status == "completed":
            out.print(f"job {executor.job}: every run completed; results in {study_dir}")
            return EXIT_OK
        out.print(f"job {executor.job} ended {followed.status} with {followed.detail or '0 runs not completed'}; "
                  f"--resume-dir {study_dir} --executor slurm submits them")  # fmt: skip
        return EXIT_RUNS_FAILED
    summary = summarise(study_dir, loop.options.factors)
    print_results(summary, out)
    if executor.overlapped:
        what = plural(executor.overlapped, "run")
        err.print(f"{what} overlapped another run's measurement (overlapped_with in manifest.json)")
    failed = [e for e in summary.manifest.runs if e.status != "completed"]
    out.print(f"{len(summary.manifest.runs) - len(failed)}/{len(summary.manifest.runs)} runs completed; "
              f"results in {study_dir}")  # fmt: skip
    return EXIT_RUNS_FAILED if failed else exit_code(followed)


def _slurm_options(args: argparse.Namespace, user: UserConfig | None) -> SlurmOptions:
    from .slurm import SlurmOptions

    def pick(flag: str | None, key: str) -> str | None:
        return flag or (user.value(f"slurm.{key}") if user else None)

    if args.slurm_tasks is not None and args.slurm_tasks < 1:
        raise ConfigError(f"--slurm-tasks must be at least 1, got {args.slurm_tasks}")
    if args.slurm_gpus is not None and args.slurm_gpus < 0:
        raise ConfigError(f"--slurm-gpus must be 0 or more, got {args.slurm_gpus}")
    return SlurmOptions(
        partition=pick(args.slurm_partition, "partition"),
        account=pick(args.slurm_account, "account"),
        time=pick(args.slurm_time, "time"),
        tasks=args.slurm_tasks,
        gpus=args.slurm_gpus,
        sbatch_lines=[*(user.value("slurm.sbatch_lines") if user else []), *args.sbatch_line],
    )


def _relayed(args: argparse.Namespace, values: tuple[str, ...], switches: tuple[str, ...]) -> list[str]:
    """``args``' host options among ``values`` and ``switches`` as flags for a worker: only what
    differs from the workers' own defaults (an option this command lacks is not relayed)."""
    defaults = argparse.ArgumentParser()
    host_options(defaults)
    flags = []
    for name in values:
        value = getattr(args, name, None)
        if value is not None and value != defaults.get_default(name):
            flags.append(f"--{name.replace('_', '-')}={value}")
    return flags + [f"--{name.replace('_', '-')}" for name in switches if getattr(args, name, False)]


def _worker_flags(args: argparse.Namespace) -> list[str]:
    """The host options of this invocation that the workers must run with too."""
    flags = [f"--image={image}" for image in args.image]
    flags += _relayed(
        args,
        ("runner", "run_timeout", "stall_timeout", "sample_interval", "container_memory", "pids_limit", "lock_dir",
         "timeout"),
        ("no_lock", "fail_fast", "no_circuit_breaker", "no_pull"),
    )  # fmt: skip
    simulated = os.environ.get(SIMULATE_ENV)  # --simulate-gpus sets it; said to every worker, wherever it runs
    if simulated:
        flags.append(f"--simulate-gpus={simulated}")
    return flags


def _pod_flags(args: argparse.Namespace) -> list[str]:
    """The host options of ``llem run --executor k8s`` its pods' workers run with (a pod's runner
    is local and takes no locks, its image is the Job's: those are the Job's to say; llem k8s has
    none of them)."""
    return _relayed(args, ("run_timeout", "stall_timeout", "sample_interval"), ("fail_fast", "no_circuit_breaker"))


def _print_slurm_script(args: argparse.Namespace, study: Study, plan: Plan) -> int:
    from .dryrun import print_text
    from .slurm import script

    user = load_user_config()
    root = results_root(options_from_args(args), study, user)
    where = root.resolve() / f"{study.name}_<timestamp>"
    print_text(plan, console(stderr=True))  # the plan on stderr, the script alone on stdout
    # Plain print: the script must come out exactly, never wrapped or styled.
    print(script(where, plan, _slurm_options(args, user), _worker_flags(args), len(plan.runs)))
    return EXIT_OK


def parse_cpuset(spec: str | None) -> tuple[int, ...]:
    """``--cpuset 0-3,8``: the cores, each one this process may use."""
    if not spec:
        return ()
    cores: set[int] = set()
    try:
        for part in spec.split(","):
            low, _, high = part.strip().partition("-")
            cores.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise ConfigError(f"--cpuset expects cores such as 0-3,8, got {spec!r}") from None
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    if not cores or not cores <= allowed:
        missing = sorted(cores - allowed)
        raise ConfigError(f"--cpuset {spec}: cores {missing} are not available here (have {sorted(allowed)})")
    return tuple(sorted(cores))


def cmd_worker(args: argparse.Namespace) -> int:
    """One worker of a study run by many (a Slurm array task, a Kubernetes pod)."""
    import dataclasses
    import socket

    from .studyloop import StudyLoop

    study_dir = Path(args.dir)
    manifest = StudyDir(study_dir).manifest()  # ConfigError, in one line, without a readable manifest
    # What was planned: the study directory's copy of the study file, never the live one.
    profile = (manifest.protocol or {}).get("profile")  # applied again, as when it was planned
    study = load_planned_study(study_dir, manifest.study_file, name_override=manifest.study_name, profile=profile)
    if study.design_hash != manifest.study_design_hash:
        raise ConfigError(
            f"{StudyDir(study_dir).study_copy} does not match its manifest (design hash "
            f"{manifest.study_design_hash} -> {study.design_hash}); plan the study anew"
        )
    if args.engine:  # this worker's image runs one engine (a Kubernetes pod)
        engine = canonical_engine(args.engine)
        if engine not in {e.config.engine for e in study.experiments}:
            raise ConfigError(f"--engine {args.engine}: the study has no {engine} experiment")
        study = dataclasses.replace(study, experiments=tuple(e for e in study.experiments if e.config.engine == engine))
    plan = make_plan(study, n_cycles=manifest.n_cycles, order=manifest.experiment_order)  # type: ignore[arg-type]
    if args.stale_after <= 0:
        raise ConfigError(f"--stale-after must be positive, got {args.stale_after}")
    args.results_dir = str(study_dir.parent)
    asked = options_from_args(args)
    user = load_user_config()
    options = dataclasses.replace(
        host_settings(asked, study, user), claim_stale_s=args.stale_after, cpuset=parse_cpuset(args.cpuset)
    )
    runners, docker = make_runners(study, asked, user, on_pull=PullLines(console(stderr=True), why="not on this host"))
    name = args.worker_id or f"{socket.gethostname()}:{os.getpid()}"
    events = _WorkerLog(name)
    loop = StudyLoop(plan, options, runners, events=events)
    prepare_host(loop, runners, docker, _say)
    loop.attach(study_dir)
    loop.execute(worker=name)
    ran = events.finished
    completed = sum(1 for status in ran.values() if status == "completed")
    print(f"worker {name}: ran {plural(len(ran), 'run')}, {completed} completed", flush=True)
    return EXIT_OK if completed == len(ran) else EXIT_RUNS_FAILED


def cmd_pull(args: argparse.Namespace) -> int:
    """Pull every image the study's docker-run engines use (also those already here: a tag may
    have moved), check each speaks this llem's contract, and print its digest."""

    asked = options_from_args(args)
    study, _ = load_plan(Path(args.study), asked)
    user = load_user_config()
    images = resolve_images(study.images, args.image, user)
    runners, docker = make_runners(study, asked, user, on_pull=PullLines(console(stderr=True), why="not on this host"))
    wanted = sorted({images[e] for e, runner in runners.items() if runner.kind == "docker"})
    progress = PullLines(console(stderr=True))
    problems = []
    for image in wanted:
        problem = docker.pull(image, progress) or docker.image_problem(image)
        if problem:
            problems.append(problem)
            continue
        digests = docker.describe([image])[1][image].get("repo_digests") or ["(no registry digest)"]
        print(f"{image}: {', '.join(digests)}")  # plain: digests are copied, never wrapped
    if problems:
        raise EnvironmentProblem(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    return EXIT_OK


def cmd_k8s(args: argparse.Namespace) -> int:
    """``llem k8s`` (and ``llem run --executor k8s``): plan the study into --results-dir (the
    pods' volume), or resume it there, and write one Indexed Job per engine for kubectl."""
    from . import k8s
    from .execution import HostSettings
    from .executors import Kubernetes
    from .studyloop import StudyLoop

    if args.pods is not None and args.pods < 1:
        raise ConfigError(f"--pods must be at least 1, got {args.pods}")
    if args.out is None or args.pvc is None:
        raise ConfigError("--executor k8s writes the Jobs: it needs --out DIR and --pvc NAME (as llem k8s)")
    asked = options_from_args(args)
    study, plan = load_plan(Path(args.study), asked)
    user = load_user_config()
    root = results_root(asked, study, user).resolve()
    mount = args.mount_path or str(root)
    if not mount.startswith("/"):
        raise ConfigError(f"--mount-path must be absolute, got {mount!r}")
    images = resolve_images(study.images, args.image, user)
    given = {canonical_engine(item.partition("=")[0]) for item in args.image}
    err = console(stderr=True)
    pod_images = {e: _pinned(e, ref if e in given else k8s.worker_image(ref), err) for e, ref in images.items()}
    hours = args.timeout if args.timeout is not None else study.execution.wall_clock_timeout_hours
    # Checked before anything is planned: a name or size the cluster would refuse is one line.
    opts = k8s.K8sOptions(
        results_pvc=args.pvc, mount_path=mount, images=pod_images, namespace=args.namespace,
        model_cache_pvc=args.model_cache_pvc, hf_token_secret=args.hf_token_secret, pods=args.pods, gpus=not args.cpu,
        cpus=args.cpus or "4", memory=args.memory or "16Gi",
        deadline_s=k8s.default_deadline_s(plan, asked.run_timeout_s) if hours is None else max(1, round(hours * 3600)),
    )  # fmt: skip
    for model in sorted({e.config.model for e in study.experiments}):
        local = (study.path.parent / model) if not Path(model).is_absolute() else Path(model)
        if local.is_dir() and not local.resolve().is_relative_to(root):
            err.print(f"[yellow]warning[/] model {model} is a directory of this host, not on the pods' volume "
                      f"({root}): the pods will not see it unless it is there at the same path")  # fmt: skip
    options = HostSettings(results_root=root, images=images, run_timeout_s=3600.0, gpu_indices=(), lock_dir=None,
                           lock_wait_s=None, hf_home=user.hf_home)  # fmt: skip
    loop = StudyLoop(plan, options, _PodRunners(), events=NoEvents())
    executor = Kubernetes(opts, Path(args.out), root, _pod_flags(args))
    study_dir = executor.submit(loop, asked)
    for path in executor.written:
        print(path)
    err.print(f"study {study.name}: {plural(len(plan.runs), 'run')} planned in {study_dir}; "
              f"{executor.follow(loop, study_dir).detail}")  # fmt: skip
    return EXIT_OK


def _pinned(engine: str, ref: str, err: Console) -> str:
    """``ref`` by its registry digest (``name@sha256:...``) where this host has the image with
    one: a tag can move between the plan and a pod's start, a digest cannot. Else the tag, said.
    An image this host has must be llem's worker image (``io.llem.worker=true``): the pods run
    ``llem worker``, which an agent image lacks (every run would fail without result.json)."""
    from .docker_runner import LABEL_WORKER_IMAGE, DockerRunner, repository_digest

    try:
        here: dict[str, Any] | None = DockerRunner().describe([ref])[1][ref]
    except Exception:  # no Docker here, or the image is not: the tag it is, and say so
        here = None
    if here is not None and (here.get("labels") or {}).get(LABEL_WORKER_IMAGE) != "true":
        raise ConfigError(
            f"the {engine} pods' image {ref} is not llem's worker image (no {LABEL_WORKER_IMAGE}=true label; an agent "
            "image has no `llem worker`, the pods' command): give the worker image built from it "
            f"(images/worker/Dockerfile with --build-arg ENGINE_IMAGE={ref}; `make images` builds the pytorch one)"
        )
    if "@sha256:" in ref:
        return ref
    pinned = repository_digest([str(d) for d in (here or {}).get("repo_digests") or []], ref)
    if pinned is None:
        err.print(f"[yellow]warning[/] {ref}: no registry digest on this host, the Jobs name it by tag (push or "
                  "pull it first to pin it by digest)")  # fmt: skip
        return ref
    return pinned


class _PodRunners(dict[str, "Runner"]):
    """Every engine's runs execute in a pod, by the local runner of the worker there."""

    def __missing__(self, engine: str) -> Runner:
        from .local_runner import LocalRunner

        return LocalRunner(engine)


class _WorkerLog:
    """A worker's progress as plain lines (its output is a Slurm or pod log, not a terminal)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.finished: dict[str, str] = {}

    def _say(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {self.name}: {text}", flush=True)

    def run_started(self, run: PlannedRun, position: int, total: int) -> None:
        self._say(f"{run.run_id} started")

    def run_finished(self, outcome: RunOutcome) -> None:
        self.finished[outcome.run.run_id] = outcome.entry.status
        failure = f" ({outcome.entry.failure.message})" if outcome.entry.failure else ""
        self._say(f"{outcome.run.run_id} {outcome.entry.status}{failure}")

    def waiting_for_devices(self, names: list[str]) -> None:
        self._say(f"waiting for {', '.join(names)}")

    def pausing(self, seconds: float) -> None:
        self._say(f"pausing {seconds:g} s")

    def note(self, text: str) -> None:
        """What the claim loop has to say (runs other workers hold, a claim lost)."""
        self._say(text)

    def run_phase(self, run: PlannedRun, phase: str, detail: str) -> None: ...
