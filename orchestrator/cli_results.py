"""``llem results`` and ``llem report``: a study directory read back, as a table or a report."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .display import console
from .errors import EXIT_OK, ConfigError, EnvironmentProblem
from .userconfig import UserConfig, load_user_config

if TYPE_CHECKING:
    from .results import ExperimentSummary, StudySummary


def study_dir_arg(arg: str | None, user: UserConfig, results_dir: str | None = None) -> Path:
    """A study directory, or a results directory whose newest study is meant (default:
    --results-dir, else the user config's output.results_dir)."""
    from .studydir import StudyDir, newest_study

    path = Path(arg) if arg else Path(results_dir) if results_dir else user.results_dir
    if StudyDir(path).is_study():
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
    out = console()
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
