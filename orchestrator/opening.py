"""Opening a study directory: creating one for a new study, and checking and updating one that a
resume continues (the same design, the same image for what completed, the host it resumes on)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ConfigError, EnvironmentProblem
from .execution import HostSettings
from .hostinfo import host_facts
from .manifest import Manifest, RunEntry, RunFailure, SkippedEntry, utc_now
from .plan import Plan, PlannedRun
from .results import write_design
from .studydir import StudyDir

EntryFor = Callable[[PlannedRun], RunEntry]  # a run's manifest entry as this host would run it
Described = tuple[dict[str, Any], dict[str, dict[str, Any]]]  # the runners' facts, and each image's by ref
Facts = Callable[[], Described]


def create(plan: Plan, options: HostSettings, entry_for: EntryFor, runner_facts: Facts) -> tuple[Path, Manifest]:
    """Create the study directory with a copy of the study file, host.json (``runner_facts``:
    what this host's runners say, or nothing for runs elsewhere), the design and an all-pending
    manifest."""
    study = plan.study
    directory = StudyDir.create(options.results_root, study.name)
    study_dir = directory.path
    try:
        directory.copy_study_file(study.path)
        server, images = runner_facts()
        directory.write_host(host_facts(server, images) | {"measurement": options.factors.as_dict()})
        _write_design(study_dir, plan)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot write into {study_dir}: {exc.strerror or exc}") from None
    manifest = Manifest(
        study_name=study.name,
        study_id=study_dir.name,
        study_design_hash=study.design_hash,
        study_file=str(study.anchor),
        llem_version=__version__,
        n_cycles=plan.n_cycles,
        experiment_order=plan.order,
        shuffle_seed=plan.seed,
        protocol=protocol(plan, options),
        runs=[entry_for(run) for run in plan.runs],
        skipped=[SkippedEntry(index=s.index, reason=s.reason, point=s.point) for s in study.skipped],
    )
    return study_dir, manifest


def protocol(plan: Plan, options: HostSettings) -> dict[str, Any]:
    """The measurement protocol this invocation runs ``plan`` with (002 measurement_protocol)."""
    config_gap, cycle_gap = options.gaps_s(plan.study.execution)
    wall = options.wall_clock_limit_s
    return {
        "profile": options.profile,
        "n_cycles": plan.n_cycles,
        "experiment_order": plan.order,
        "shuffle_seed": plan.seed,
        "config_gap_seconds": config_gap,
        "cycle_gap_seconds": cycle_gap,
        "max_consecutive_failures": options.max_consecutive_failures,
        "circuit_breaker_cooldown_seconds": options.circuit_breaker_cooldown_s,
        "wall_clock_timeout_hours": None if wall is None else wall / 3600.0,
        "run_timeout_seconds": options.run_timeout_s,
        "stall_timeout_seconds": options.stall_timeout_s,
        "sample_interval_seconds": options.sample_interval_s,
    }


def _write_design(study_dir: Path, plan: Plan) -> None:
    study = plan.study
    write_design(
        study_dir,
        study.design_hash,
        ((e.index, e.config_hash, e.config.model_dump(mode="json")) for e in study.experiments),
    )


def resume(study_dir: Path, plan: Plan, options: HostSettings, entry_for: EntryFor, runner_facts: Facts) -> Manifest:
    """The manifest to continue an earlier study with: its completed runs stay, every other run
    runs again.

    The study's design must not have changed (same design hash): results of different
    parameter spaces are never mixed. More cycles than before are added as new runs.
    """
    directory = StudyDir(study_dir)
    manifest = directory.manifest()  # ConfigError, in one line, when missing, unreadable or damaged
    if manifest.study_design_hash != plan.study.design_hash:
        planned = (manifest.protocol or {}).get("profile")
        hint = ""
        if planned != plan.study.profile:  # a profile fills experiment fields: resume with the same one
            hint = f" (it was planned with {f'--profile {planned}' if planned else 'no --profile'})"
        raise ConfigError(
            f"{study_dir}: the study's design changed since it ran (design hash {manifest.study_design_hash} "
            f"-> {plan.study.design_hash}){hint}; run it as a new study instead of mixing results"
        )
    facts = runner_facts()  # this host's runners, and the images this resume would run (their ids)
    _check_resumed_runs(study_dir, manifest, plan, entry_for, facts[1])
    for run_id, why in directory.lost_results(manifest).items():  # a result gone or damaged: run it again
        problem = why.splitlines()[0][:160]
        entry = manifest.run(run_id)
        entry.status = "failed"
        entry.failure = RunFailure(kind="lost_result", message=f"{problem} when the study was resumed")
        manifest.history.append({"status": "result_lost", "run": run_id, "detail": problem, "at": utc_now()})
    for entry in manifest.runs:  # everything not completed runs again (its failure stays on record)
        if entry.status in ("failed", "skipped"):
            entry.status = "pending"
    manifest.study_file = str(plan.study.anchor)  # anchors the copy's relative paths
    directory.copy_study_file(plan.study.path)  # an edited file (other runners, images): the earlier copy kept
    _note_resumed_host(directory, plan, options, facts)
    known = {entry.run_id for entry in manifest.runs}
    manifest.runs.extend(entry_for(run) for run in plan.runs if run.run_id not in known)
    manifest.n_cycles = max(manifest.n_cycles, plan.n_cycles)
    if not directory.design_file.exists():
        _write_design(study_dir, plan)
    return manifest


def _note_resumed_host(directory: StudyDir, plan: Plan, options: HostSettings, facts: Described) -> None:
    """host.json keeps the host the study was planned on and gains, per resume, the host and
    images that resume runs with, its measurement factors and protocol (``resumed``)."""
    server, images = facts
    directory.add_resumed_host(
        host_facts(server, images)
        | {"measurement": options.factors.as_dict(), "protocol": protocol(plan, options), "at": utc_now()}
    )


def _check_resumed_runs(
    study_dir: Path, manifest: Manifest, plan: Plan, entry_for: EntryFor, images: dict[str, dict[str, Any]]
) -> None:
    """Each run resumed is the run planned: its experiment's config hash (a reordered sweep
    would otherwise resume into swapped experiment ids), and, where it completed, the image
    and runner this resume would use (a completed run's numbers never sit beside another
    image's): the same tag, and the same image id where the run recorded one and this host
    knows the tag's (``images``: ref -> its facts), so a tag rebuilt or pulled since is refused
    too. Runs still to run take this resume's image and runner."""
    planned = {run.run_id: run for run in plan.runs}
    for entry in manifest.runs:
        run = planned.get(entry.run_id)
        if run is None:
            continue
        if run.experiment.config_hash != entry.config_hash:
            raise ConfigError(
                f"{study_dir}: run {entry.run_id} was planned as config {entry.config_hash}, this study makes it "
                f"{run.experiment.config_hash} (experiments reordered?); run it as a new study"
            )
        fresh = entry_for(run)
        engine = run.experiment.config.engine
        if entry.status != "completed":
            if (entry.image, entry.runner) != (fresh.image, fresh.runner):  # its next attempt says what it ran
                entry.image, entry.runner, entry.image_id, entry.image_digest = fresh.image, fresh.runner, None, None
        elif (entry.image, entry.runner) != (fresh.image, fresh.runner):
            raise ConfigError(
                f"{study_dir}: completed {engine} runs ran in {entry.image} ({entry.runner}); this resume would "
                f"run {fresh.image} ({fresh.runner}): resume with --image {engine}={entry.image} (and that "
                "runner), or run the study anew"
            )
        elif entry.image_id and (now := (images.get(fresh.image) or {}).get("id")) and now != entry.image_id:
            raise ConfigError(
                f"{study_dir}: completed {engine} runs ran in {entry.image} as image {entry.image_id}; that tag "
                f"names {now} on this host now (rebuilt or pulled since): tag the image they ran in again "
                f"where this host still has it (docker tag {entry.image_id} {entry.image}) and resume, or run the "
                "study anew"
            )
