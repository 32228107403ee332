"""``llem run --dry-run``: the plan before any GPU time, as text or as one JSON object."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from llem_agent.contract import unsupported_by_agent

from .devices import Gpu, devices_needed
from .display import experiment_labels
from .errors import ConfigError
from .models import VramEstimate, cached_snapshot, estimate_vram, hf_home, model_facts, resolve_model_dir
from .plan import Plan
from .words import plural


def vram_estimates(plan: Plan) -> dict[int, VramEstimate | None]:
    """Estimate per experiment where the model's files are on this machine, else None."""
    out: dict[int, VramEstimate | None] = {}
    base, cache = plan.study.path.parent, hf_home()
    folders: dict[str, Path | None] = {}
    for exp in plan.study.experiments:
        model = exp.config.model
        if model not in folders:
            try:
                folders[model] = resolve_model_dir(model, base) or cached_snapshot(model, cache)
            except ConfigError:
                folders[model] = None
        folder = folders[model]
        facts = model_facts(folder) if folder else None
        out[exp.index] = estimate_vram(exp.config, facts) if facts else None
    return out


# An estimate within this share of the GPUs' memory is called a likely OOM: the CUDA context,
# the allocator's fragmentation and activations take what the estimate does not count.
OOM_SHARE = 0.95


def likely_oom(estimate: VramEstimate | None, config_devices: int, gpus: list[Gpu]) -> bool | None:
    """Whether the experiment's estimate exceeds what its GPUs hold (002 Level 2): the smallest
    of this host's GPUs x the GPUs one run takes x ``OOM_SHARE``. None where there is no
    estimate or no GPU here to hold it against."""
    memories = [g.memory_gb for g in gpus if g.memory_gb]
    if estimate is None or not memories:
        return None
    return estimate.total_gb > min(memories) * config_devices * OOM_SHARE


def _oom_verdicts(plan: Plan, vram: dict[int, VramEstimate | None], gpus: list[Gpu]) -> dict[int, bool | None]:
    return {e.index: likely_oom(vram[e.index], devices_needed(e.config), gpus) for e in plan.study.experiments}


def plan_document(plan: Plan, gpus: list[Gpu] | None = None) -> dict[str, Any]:
    """The plan as plain data: hashes, experiments, skipped grid points, run order."""
    study = plan.study
    vram = vram_estimates(plan)
    oom = _oom_verdicts(plan, vram, gpus or [])
    return {
        "study_name": study.name,
        "study_design_hash": study.design_hash,
        "n_cycles": plan.n_cycles,
        "experiment_order": plan.order,
        "shuffle_seed": plan.seed,
        "experiments": [
            {
                "index": exp.index,
                "config_hash": exp.config_hash,
                "config": exp.config.model_dump(mode="json", exclude_none=True),
                "vram_estimate_gb": round(v.total_gb, 3) if (v := vram[exp.index]) else None,
                "likely_oom": oom[exp.index],
                "not_applied_by_agent": unsupported_by_agent(exp.config, exp.config.engine),
            }
            for exp in study.experiments
        ],
        "skipped": [{"index": s.index, "point": s.point, "config": s.raw, "reason": s.reason} for s in study.skipped],
        "warnings": list(study.warnings),
        "runs": [
            {"index": r.experiment.index, "cycle": r.cycle, "config_hash": r.experiment.config_hash, "run_id": r.run_id}
            for r in plan.runs
        ],
    }


def _size(gb: float) -> str:
    """The GPU memory estimate, labelled as one (on a CPU machine it still says what a GPU needs)."""
    return f"GPU mem ~{gb:.1f} GB" if gb >= 0.1 else f"GPU mem ~{gb * 1024:.1f} MB"


def print_json(plan: Plan, gpus: list[Gpu] | None = None) -> None:
    print(json.dumps(plan_document(plan, gpus), separators=(",", ":")))


def print_text(plan: Plan, console: Console, gpus: list[Gpu] | None = None) -> None:
    study = plan.study
    vram = vram_estimates(plan)
    oom = _oom_verdicts(plan, vram, gpus or [])
    console.print(f"study [bold]{study.name}[/]  design {study.design_hash}")
    console.print(
        f"{plural(len(study.experiments), 'experiment')} × {plural(plan.n_cycles, 'cycle')} = "
        f"{plural(len(plan.runs), 'run')}, order {plan.order}"
    )
    labels = experiment_labels(study)
    for exp in study.experiments:
        estimate = vram[exp.index]
        memory = _size(estimate.total_gb) if estimate else "GPU mem ? (model files not local)"
        mark = "  [bold red]LIKELY OOM[/]" if oom[exp.index] else ""
        console.print(f"  {exp.index + 1:3d}  {exp.config_hash}  {memory:>20}  {labels[exp.index]}{mark}")
        refused = unsupported_by_agent(exp.config, exp.config.engine)
        if refused:
            console.print(f"       [yellow]would be refused:[/] the agent does not apply {', '.join(refused)} yet")
    if study.skipped:
        console.print(f"skipping {plural(len(study.skipped), 'invalid grid point')} (nothing will run for them):")
    for skipped in study.skipped:
        console.print(f"  [yellow]✗[/] {skipped.describe()}")
    for warning in study.warnings:
        console.print(f"[yellow]warning[/] {warning}")
    console.print(_verdict(oom, gpus or []))
    console.print("run order: " + " ".join(r.run_id for r in plan.runs))


def _verdict(oom: dict[int, bool | None], gpus: list[Gpu]) -> str:
    """``N will run, M likely OOM`` against the smallest GPU here, or why nothing was held."""
    memories = [g.memory_gb for g in gpus if g.memory_gb]
    if not memories:
        return "memory: no GPU here to hold the estimates against (--dry-run on the GPU host says which would fit)"
    fits = sum(1 for v in oom.values() if v is False)
    over = sum(1 for v in oom.values() if v)
    unknown = sum(1 for v in oom.values() if v is None)
    said = f"memory: {fits} will run, {over} likely OOM (estimate > {OOM_SHARE:.0%} of {min(memories):.0f} GB per GPU)"
    return said + (f", {unknown} not estimated (model files not local)" if unknown else "")
