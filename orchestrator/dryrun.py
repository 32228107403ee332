"""``llem run --dry-run``: the plan before any GPU time, as text or as one JSON object."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from llem_agent.contract import unsupported_by_agent
from orchestrator.display import experiment_labels
from orchestrator.errors import ConfigError
from orchestrator.models import VramEstimate, cached_snapshot, estimate_vram, hf_home, model_facts, resolve_model_dir
from orchestrator.plan import Plan


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


def plan_document(plan: Plan) -> dict[str, Any]:
    """The plan as plain data: hashes, experiments, skipped grid points, run order."""
    study = plan.study
    vram = vram_estimates(plan)
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
                "not_applied_by_agent": unsupported_by_agent(exp.config, exp.config.engine),
            }
            for exp in study.experiments
        ],
        "skipped": [{"index": s.index, "config": s.raw, "reason": s.reason} for s in study.skipped],
        "runs": [
            {"index": r.experiment.index, "cycle": r.cycle, "config_hash": r.experiment.config_hash, "run_id": r.run_id}
            for r in plan.runs
        ],
    }


def _size(gb: float) -> str:
    """The GPU memory estimate, labelled as one (on a CPU machine it still says what a GPU needs)."""
    return f"GPU mem ~{gb:.1f} GB" if gb >= 0.1 else f"GPU mem ~{gb * 1024:.1f} MB"


def print_json(plan: Plan) -> None:
    print(json.dumps(plan_document(plan), separators=(",", ":")))


def print_text(plan: Plan, console: Console) -> None:
    study = plan.study
    vram = vram_estimates(plan)
    console.print(f"study [bold]{study.name}[/]  design {study.design_hash}")
    console.print(
        f"{len(study.experiments)} experiments × {plan.n_cycles} cycles = {len(plan.runs)} runs, order {plan.order}"
    )
    labels = experiment_labels(study)
    for exp in study.experiments:
        estimate = vram[exp.index]
        memory = _size(estimate.total_gb) if estimate else "GPU mem ? (model files not local)"
        console.print(f"  {exp.index + 1:3d}  {exp.config_hash}  {memory:>20}  {labels[exp.index]}")
        refused = unsupported_by_agent(exp.config, exp.config.engine)
        if refused:
            console.print(f"       [yellow]would be refused:[/] the agent does not apply {', '.join(refused)} yet")
    if study.skipped:
        console.print(f"skipping {len(study.skipped)} invalid grid points (nothing will run for them):")
    for skipped in study.skipped:
        console.print(f"  [yellow]✗[/] grid point {skipped.index + 1}: {skipped.reason}")
    console.print("run order: " + " ".join(r.run_id for r in plan.runs))
