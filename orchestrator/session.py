"""From :class:`~.options.Options` to a runner ready to run on this host: the study and its plan
within the size limits, the host's settings resolved (flags over ``study_execution`` over the user
config), each engine's runner, and the host prepared. The Python API and every command that
runs a study (``llem run``, ``llem worker``, ``llem pull``, ``llem k8s``) go through here; nothing
here prints: what the user should hear goes to a ``say`` callback."""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from llem_agent.contract import ENGINES, canonical_engine

from .errors import ConfigError
from .execution import HostSettings
from .options import Options
from .plan import Plan, make_plan
from .study import DEFAULT_CYCLES, Study, load_study
from .studydir import newest_unfinished
from .userconfig import UserConfig

if TYPE_CHECKING:
    from .docker_runner import DockerRunner
    from .runner import PullProgress, Runner
    from .studyloop import StudyLoop

Say = Callable[[str], None]


def parse_images(items: Sequence[str]) -> dict[str, str]:
    """``--image ENGINE=IMAGE`` flags as a mapping (an alias such as transformers is its engine)."""
    images: dict[str, str] = {}
    for item in items:
        engine, sep, ref = item.partition("=")
        if not sep or not ref or canonical_engine(engine) not in ENGINES:
            raise ConfigError(f"--image expects ENGINE=IMAGE with ENGINE one of {list(ENGINES)}, got {item!r}")
        images[canonical_engine(engine)] = ref
    return images


def resolve_images(
    study_images: dict[str, str], overrides: Mapping[str, str] | Sequence[str], user: UserConfig
) -> dict[str, str]:
    """Image per engine; later wins: ``llem/<engine>:<version>``, the user config, the study's
    ``runners:``, ``LLEM_IMAGE_<ENGINE>``, ``overrides`` (``--image``: a mapping, or its flags)."""
    if not isinstance(overrides, Mapping):
        overrides = parse_images(overrides)
    images: dict[str, str] = {}
    for engine in ENGINES:
        setting = user.settings[f"images.{engine}"]
        from_env = setting.source.startswith("env ")
        images[engine] = setting.value if from_env else study_images.get(engine, setting.value)
    for engine, ref in overrides.items():
        if canonical_engine(engine) not in ENGINES or not ref:
            raise ConfigError(f"images: expects ENGINE=IMAGE with ENGINE one of {list(ENGINES)}, got {engine!r}")
        images[canonical_engine(engine)] = ref
    return images


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


def results_root(options: Options, study: Study, user: UserConfig) -> Path:
    """Where the study directory goes: --results-dir, else the study's output_dir, else the user
    config's output.results_dir (else ./results)."""
    if options.results_dir:
        return Path(options.results_dir)
    return study.output_dir if study.output_dir is not None else user.results_dir


def host_settings(options: Options, study: Study, user: UserConfig) -> HostSettings:
    """Host settings of this invocation: ``options`` over the study's study_execution and the user config."""
    from .devices import allowed_gpus
    from .simulation import simulated_gpus

    if options.run_timeout_s <= 0:
        raise ConfigError(f"--run-timeout must be positive, got {options.run_timeout_s}")
    if not 0.001 <= options.sample_interval_s <= 10:
        raise ConfigError(f"--sample-interval must be between 0.001 and 10 seconds, got {options.sample_interval_s}")
    if options.stall_timeout_s <= 0:
        raise ConfigError(f"--stall-timeout must be positive, got {options.stall_timeout_s}")
    if options.timeout_hours is not None and options.timeout_hours <= 0:
        raise ConfigError(f"--timeout must be positive hours, got {options.timeout_hours}")
    execution = study.execution
    breaker = {"fail_fast": 1, "never": 0}.get(options.failures, execution.max_consecutive_failures)
    hours = options.timeout_hours if options.timeout_hours is not None else execution.wall_clock_timeout_hours
    gpu_indices, gpu_uuids = allowed_gpus(options.gpus)
    machine = user.gaps_s(gpus=bool(gpu_indices))
    return HostSettings(
        results_root=results_root(options, study, user),
        images=resolve_images(study.images, options.images, user),
        run_timeout_s=options.run_timeout_s,
        gpu_indices=gpu_indices,
        gpu_uuids=gpu_uuids,
        lock_dir=None if options.lock_dir is None else Path(options.lock_dir),
        lock_wait_s=None if options.wait_for_devices else 0.0,
        hf_home=user.hf_home,
        factors=user.factors(),
        baseline_cache=baseline_cache_dir(),
        engine_cache=baseline_cache_dir().parent / "engines",
        stall_timeout_s=options.stall_timeout_s,
        sample_interval_s=options.sample_interval_s,
        container_memory=container_memory(options.container_memory),
        pids_limit=options.pids_limit or None,
        max_consecutive_failures=breaker,
        circuit_breaker_cooldown_s=execution.circuit_breaker_cooldown_seconds,
        wall_clock_limit_s=None if hours is None else hours * 3600.0,
        config_gap_s=execution.config_gap_seconds if execution.config_gap_seconds is not None else machine[0],
        cycle_gap_s=execution.cycle_gap_seconds if execution.cycle_gap_seconds is not None else machine[1],
        profile=study.profile,
        simulation=simulated_gpus(),
    )


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
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


@gc_paused()
def load_plan(source: Path | Study, options: Options, check_files: bool = False) -> tuple[Study, Plan]:
    """The study (a file, or one already loaded) and its plan, within the size limits;
    ``check_files``: its models and prompt files too (a dry run, which has no preflight)."""
    for flag, value in (("--max-experiments", options.max_experiments), ("--max-runs", options.max_runs)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if options.cycles is not None and options.cycles < 1:
        raise ConfigError(f"--cycles must be at least 1, got {options.cycles}")
    if isinstance(source, Study):
        study = source
        if len(study.experiments) > options.max_experiments:
            raise ConfigError(f"{study.path}: more than {options.max_experiments:,} experiments")
    else:
        study = load_study(
            Path(source), name_override=options.name, max_experiments=options.max_experiments, profile=options.profile
        )
    cycles = options.cycles or study.execution.n_cycles or DEFAULT_CYCLES
    if len(study.experiments) * cycles > options.max_runs:
        raise ConfigError(
            f"{study.path}: {len(study.experiments):,} experiments x {cycles:,} cycles = "
            f"{len(study.experiments) * cycles:,} runs, more than the limit of {options.max_runs:,} "
            "(--max-runs raises it if you mean it)"
        )
    plan = make_plan(study, n_cycles=options.cycles, order=options.order)
    if check_files:  # a real run's preflight checks these too; a dry run must not plan what cannot run
        from .datasets import resolve_dataset
        from .models import resolve_model_dir

        distinct = {
            (e.config.model, e.config.dataset.source, e.config.dataset.n_prompts): e.config for e in study.experiments
        }
        for config in distinct.values():  # once per model and prompt source, not per experiment
            resolve_model_dir(config.model, study.base_dir)
            resolve_dataset(config, study.base_dir)
    return study, plan


def make_runners(
    study: Study, options: Options, user: UserConfig, on_pull: PullProgress | None = None
) -> tuple[dict[str, Runner], DockerRunner]:
    """The runner of each engine of ``study`` (runner precedence: 002), and the Docker one
    (``on_pull``: told how pulling an image this host lacks goes; never called without ``pull``)."""
    from .docker_runner import DockerRunner
    from .local_runner import LocalRunner
    from .runners import resolve_runners

    engines = {e.config.engine for e in study.experiments}
    choices = resolve_runners(engines, study=study.runners, cli=options.runner, user=user.runners())
    # Connects on first use: a study run entirely by the local runner needs no Docker.
    docker = DockerRunner(
        contract_cache=baseline_cache_dir().parent / "contracts", on_pull=on_pull if options.pull else None
    )
    return {
        engine: LocalRunner(engine, chosen_by=choice.source) if choice.kind == "local" else docker
        for engine, choice in choices.items()
    }, docker


def prepare_host(loop: StudyLoop, runners: dict[str, Runner], docker: DockerRunner, say: Say) -> None:
    """Checks, leftovers of dead llem processes removed, shared caches made: before any run here."""
    from .local_runner import LocalRunner
    from .reaper import reap_orphans

    loop.preflight()
    for engine, runner in sorted(runners.items()):
        if isinstance(runner, LocalRunner):
            say(f"{engine}: local runner ({runner.chosen_by}); the agent runs as a process on this host")
    if any(runner is docker for runner in runners.values()):
        for name in reap_orphans(docker):
            say(f"removed orphan container {name} (its llem process is gone)")
    host = loop.options
    ensure_shared_dirs([host.hf_home, host.baseline_cache, host.engine_cache])


def open_study(options: Options, loop: StudyLoop, describe: bool = True) -> Path:
    """The study directory this invocation runs: resumed (``resume``, ``resume_dir``) or new."""
    if options.resume or options.resume_dir:
        root, name = loop.options.results_root, loop.plan.study.name
        study_dir = Path(options.resume_dir) if options.resume_dir else newest_unfinished(root, name)
        return loop.resume(study_dir, describe=describe)
    return loop.prepare(describe=describe)
