"""What the user sees: a rich progress display while running and a summary table after."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .execution import RunOutcome
from .plan import Plan, PlannedRun
from .results import ExperimentSummary, StudySummary, experiment_label, flatten, varying_keys
from .stats import Stat, format_mean_ci
from .study import Study
from .summary import SIMULATED_BANNER


def console(stderr: bool = False) -> Console:
    """A console for llem's output. Pipes and CI logs get a wide, fixed width instead of rich's
    80-column fallback, and lines that are never wrapped: a long path or error stays on one line
    for copy and grep."""
    tty = (sys.stderr if stderr else sys.stdout).isatty()
    return Console(stderr=stderr, width=None if tty else 150, soft_wrap=not tty)


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


def experiment_labels(study: Study) -> list[str]:
    """Short label of each experiment: engine plus the fields that differ between experiments
    (computed once for the whole study: it compares every experiment with every other)."""
    flat = [flatten(e.config.model_dump(mode="json", exclude_none=True)) for e in study.experiments]
    varying = varying_keys(flat)
    return [experiment_label(f, varying, e.config.engine) for f, e in zip(flat, study.experiments, strict=True)]


class ProgressDisplay:
    """LoopEvents on a rich progress bar (on stderr, so stdout stays for results)."""

    def __init__(self, plan: Plan, console: Console, done: int = 0) -> None:
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
        self._task = self._progress.add_task("study", total=len(plan.runs), completed=done)
        self._labels = experiment_labels(plan.study)

    def __enter__(self) -> ProgressDisplay:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def run_started(self, run: PlannedRun, position: int, total: int) -> None:
        label = self._labels[run.experiment.index]
        self._progress.update(self._task, description=f"{run.run_id} {label}")

    def run_phase(self, run: PlannedRun, phase: str, detail: str) -> None:
        label = self._labels[run.experiment.index]
        extra = f", {detail}" if detail else ""
        self._progress.update(self._task, description=f"{run.run_id} {label} [{phase}{extra}]")

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


# Columns of `llem results` by default: (metric, header, scale to display units).
DEFAULT_COLUMNS: tuple[tuple[str, str, float], ...] = (
    ("output_tokens_per_s", "out tok/s", 1.0),
    ("j_per_output_token", "J/out tok", 1.0),
    ("mean_power_w", "power W", 1.0),
    ("ttft_p50_s", "TTFT p50 ms", 1e3),
    ("itl_p50_s", "ITL p50 ms", 1e3),
    ("e2e_p50_s", "e2e p50 ms", 1e3),
)


def column_for(metric: str) -> tuple[str, str, float]:
    """Header and scale of any metric: latencies in ms, the rest in their own unit."""
    for column in DEFAULT_COLUMNS:
        if column[0] == metric:
            return column
    if metric.endswith("_s") and metric.split("_", maxsplit=1)[0] in ("ttft", "itl", "e2e"):
        return metric, metric.removesuffix("_s") + " ms", 1e3
    return metric, metric, 1.0


def format_stat(stat: Stat, scale: float = 1.0) -> str:
    """``mean ± half-width of the 95% CI`` (just the mean for one run, – for none)."""
    return format_mean_ci(None if stat.mean is None else stat.mean * scale, stat.half_width(scale))


def short_name(key: str, keys: Sequence[str]) -> str:
    """The shortest dotted suffix of ``key`` that no other key ends with (``batch_size``)."""
    parts = key.split(".")
    for n in range(1, len(parts) + 1):
        suffix = ".".join(parts[-n:])
        if not any(other != key and (other == suffix or other.endswith("." + suffix)) for other in keys):
            return suffix
    return key


def results_table(
    summary: StudySummary,
    experiments: Sequence[ExperimentSummary] | None = None,
    metrics: Sequence[str] | None = None,
) -> Table:
    """Configurations as rows; swept parameters and key metrics (mean ± 95% CI) as columns."""
    m = summary.manifest
    rows = summary.experiments if experiments is None else experiments
    columns = [column_for(name) for name in metrics] if metrics else list(DEFAULT_COLUMNS)
    if metrics is None and summary.energy_unavailable:
        columns = [c for c in columns if c[0] not in ("j_per_output_token", "mean_power_w")]
    simulated = " on SIMULATED GPUs" if summary.gpus_simulated else ""
    table = Table(
        title=f"llem study {m.study_name} ({m.status}){simulated}: {len(summary.experiments)} experiments × "
        f"{m.n_cycles} cycles",
        caption="mean ± half-width of the 95% confidence interval (t) across cycles",
    )
    table.add_column("#", justify="right")
    for key in summary.swept:
        table.add_column(short_name(key, summary.swept), justify="left", no_wrap=True)
    if not summary.swept:
        table.add_column("experiment", justify="left")
    table.add_column("runs ok", justify="right")
    for _, header, _ in columns:
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("warnings", justify="left")
    for e in rows:
        params = [str(e.params.get(k, "–")) for k in summary.swept] or [e.label]
        style = "red" if e.completed == 0 else None
        table.add_row(
            str(e.index),
            *params,
            f"{e.completed}/{e.runs}",
            *[format_stat(e.stats[name], scale) for name, _, scale in columns],
            str(len(e.warnings)) if e.warnings else "",
            style=style,
        )
    return table


def print_results(
    summary: StudySummary, console: Console, experiments: Sequence[ExperimentSummary] | None = None,
    metrics: Sequence[str] | None = None,
) -> None:  # fmt: skip
    """The results table, then what did not complete and why, then the warnings."""
    shown = summary.experiments if experiments is None else experiments
    if summary.gpus_simulated:
        console.print(f"[bold red]{SIMULATED_BANNER}[/]")
    console.print(results_table(summary, shown, metrics))
    if summary.energy_unavailable:
        console.print(f"[yellow]energy not measured:[/] {summary.energy_unavailable}")
    for run in summary.runs:
        if run.status != "completed":
            reason = f"{run.failure_kind}: {run.failure_message}" if run.failure_kind else run.status
            console.print(f"[red]{run.status}[/] {run.run_id}: {reason}")
    for skipped in summary.manifest.skipped:
        where = f" ({skipped.point})" if skipped.point else ""
        console.print(f"[yellow]skipped[/] grid point {skipped.index + 1}{where}: {skipped.reason}")
    for e in shown:
        for warning in e.warnings:
            console.print(f"[yellow]warning[/] experiment {e.index}: {warning}")
    for warning in summary.warnings:
        console.print(f"[yellow]warning[/] {warning}")
