"""Which runner executes each engine's runs: ``docker`` (default) or ``local`` (003 ``runners:``).

One grammar wherever a runner is named: ``docker``, ``docker:<image>`` or ``local``.
Precedence, highest first (002's order): ``LLEM_RUNNER_<ENGINE>``, the user config's
``runners.<engine>``, ``llem run --runner``, the study's ``runners:``, then ``docker``. Machine
facts (what is installed on this host) outrank what a study file, written elsewhere, asks for.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from llem_agent.contract import ENGINES

from .errors import ConfigError

RunnerKind = Literal["docker", "local"]
RUNNER_KINDS: tuple[RunnerKind, ...] = ("docker", "local")


def parse_runner(value: object, where: str) -> tuple[RunnerKind, str | None]:
    """``docker`` | ``docker:<image>`` | ``local`` -> (kind, image or None); anything else is a ConfigError."""
    if value == "docker":
        return "docker", None
    if value == "local":
        return "local", None
    if isinstance(value, str) and value.startswith("docker:") and len(value) > len("docker:"):
        return "docker", value.removeprefix("docker:")
    raise ConfigError(f"{where}: expected docker, docker:<image> or local, got {value!r}")


@dataclass(frozen=True)
class RunnerChoice:
    kind: RunnerKind
    source: str


def resolve_runners(
    engines: Iterable[str],
    *,
    study: Mapping[str, RunnerKind],
    cli: RunnerKind | None,
    user: Mapping[str, RunnerKind],
    environ: Mapping[str, str] | None = None,
) -> dict[str, RunnerChoice]:
    """The runner of each engine in ``engines``, with where the choice came from."""
    env = os.environ if environ is None else environ
    out: dict[str, RunnerChoice] = {}
    for engine in sorted(engines):
        name = f"LLEM_RUNNER_{engine.upper()}"
        if env.get(name):
            kind, _ = parse_runner(env[name], name)
            out[engine] = RunnerChoice(kind, f"env {name}")
        elif engine in user:
            out[engine] = RunnerChoice(user[engine], "user config")
        elif cli is not None:
            out[engine] = RunnerChoice(cli, "--runner")
        elif engine in study:
            out[engine] = RunnerChoice(study[engine], "study runners:")
        else:
            out[engine] = RunnerChoice("docker", "default")
    return out


__all__ = ["ENGINES", "RUNNER_KINDS", "RunnerChoice", "RunnerKind", "parse_runner", "resolve_runners"]
