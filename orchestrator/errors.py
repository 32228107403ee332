"""llem's own exceptions. Each carries the exit code and a one-line message for the user."""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNS_FAILED = 1
EXIT_BROKEN_PIPE = 1  # the reader of llem's output left (`| head`); rich's console exits so too
EXIT_CONFIG = 2
EXIT_ENVIRONMENT = 3
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


class LlemError(Exception):
    """Base of every error llem reports to the user as one line."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str) -> None:
        # User text (keys, values) may hold line breaks; the report stays one line.
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


class ConfigError(LlemError):
    """The study or experiment file is wrong: fix the file."""

    exit_code = EXIT_CONFIG


class EnvironmentProblem(LlemError):
    """The machine is not ready (Docker, images, GPUs, disk): fix the environment."""

    exit_code = EXIT_ENVIRONMENT


class Interrupted(LlemError):
    """The user (or a SIGTERM) stopped the study."""

    exit_code = EXIT_INTERRUPTED


class RunFailed(LlemError):
    """``llem.run_experiment``: the experiment's run did not complete (its failure says why;
    the run directory keeps its log and error)."""

    exit_code = EXIT_RUNS_FAILED
