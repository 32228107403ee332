"""What the user sees: a rich progress display while running and a summary table after."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from llem_agent.contract import Distribution
from orchestrator.plan import Plan, PlannedRun
from orchestrator.runner import RunOutcome
from orchestrator.study import Study


def describe_experiment(study: Study, index: int) -> str:
    """Short label of an experiment: engine plus the fields that differ between experiments."""
    dumps = [e.config.model_dump(mode="json", exclude_none=True) for e in study.experiments]
    flat = [_flatten(d) for d in dumps]
    varying = sorted(k for k in set().union(*flat) if len({str(f.get(k)) for f in flat}) > 1)
    mine = flat[index]
    parts = [f"{k}={mine.get(k)}" for k in varying if k != "engine"]
    if "engine" in varying:
        parts.insert(0, str(mine["engine"]))
    return " ".join(parts) if parts else study.experiments[index].config.engine


def _flatten(data: dict[str, object], prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class ProgressDisplay:
    """RunnerEvents on a rich progress bar (on stderr, so stdout stays for results)."""

    def __init__(self, plan: Plan, console: Console) -> None:
        self.plan = plan
        self.console = console
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task("study", total=len(plan.runs))

    def __enter__(self) -> ProgressDisplay:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def run_started(self, run: PlannedRun, position: int, total: int) -> None:
        label = describe_experiment(self.plan.study, run.experiment.index)
        self._progress.update(self._task, description=f"{run.run_id} {label}")

    def run_finished(self, outcome: RunOutcome) -> None:
        entry = outcome.entry
        if entry.status == "completed" and outcome.result is not None:
            tps = outcome.result.throughput.output_tokens_per_s
            self._progress.console.print(f"  [green]✓[/] {entry.run_id}  {tps:,.1f} tok/s  {entry.wall_s:.1f} s")
        else:
            reason = entry.failure.message if entry.failure else entry.status
            self._progress.console.print(f"  [red]✗[/] {entry.run_id}  {reason}")
        self._progress.advance(self._task)

    def waiting_for_devices(self, names: list[str]) -> None:
        self._progress.console.print(f"  waiting for devices {names} (locked by another study)")

    def pausing(self, seconds: float) -> None:
        self._progress.update(self._task, description=f"gap {seconds:g} s (study_execution)")


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _p50_ms(dist: Distribution) -> float | None:
    return None if dist.p50 is None else dist.p50 * 1e3


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def summary_table(plan: Plan, outcomes: Sequence[RunOutcome]) -> Table:
    """One row per experiment: runs completed and the mean of key metrics across cycles."""
    by_exp: dict[int, list[RunOutcome]] = defaultdict(list)
    for outcome in outcomes:
        by_exp[outcome.run.experiment.index].append(outcome)
    table = Table(
        title=f"llem study {plan.study.name}: {len(plan.study.experiments)} experiments × {plan.n_cycles} cycles"
    )
    for column in ("#", "experiment", "runs ok", "out tok/s", "TTFT p50 ms", "ITL p50 ms", "e2e p50 ms", "J/out tok"):
        table.add_column(column, justify="left" if column == "experiment" else "right")
    for exp in plan.study.experiments:
        runs = by_exp.get(exp.index, [])
        results = [o.result for o in runs if o.result is not None]
        table.add_row(
            str(exp.index + 1),
            describe_experiment(plan.study, exp.index),
            f"{len(results)}/{len(runs)}",
            _fmt(_mean([r.throughput.output_tokens_per_s for r in results]), ",.1f"),
            _fmt(_mean([_p50_ms(r.latency.ttft_s) for r in results]), ".2f"),
            _fmt(_mean([_p50_ms(r.latency.inter_token_s) for r in results]), ".3f"),
            _fmt(_mean([_p50_ms(r.latency.e2e_s) for r in results]), ".1f"),
            _fmt(_mean([r.energy.j_per_output_token for r in results]), ".4f"),
        )
    return table
