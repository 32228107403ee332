"""``--profile quick|publication``: shorthands for the execution protocol (002).

A profile sets the study's ``study_execution`` fields it names (how the collection runs: cycles,
order, thermal gaps), over what the study file says, and fills the experiment fields it names
(warm-up, baseline) only where the study leaves them unset: those are part of each experiment's
identity (its config hash), and the study file stays the record of what was asked. Explicit flags
(``--cycles``, ``--order``) win over both. The profile is recorded in the manifest's protocol,
and every worker of the study applies it again when it loads the study directory's copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .errors import ConfigError

ProfileName = Literal["quick", "publication"]


@dataclass(frozen=True)
class Profile:
    name: ProfileName
    purpose: str
    execution: dict[str, Any]  # study_execution fields, set
    experiment: dict[str, Any]  # experiment fields, filled where the study is silent

    def describe(self) -> str:
        """One line: what the profile sets, for the terminal and ``--help``."""
        execution = ", ".join(f"{k} {v}" for k, v in self.execution.items())
        experiment = ", ".join(f"{section}.{k} {v}" for section, fields in self.experiment.items()
                               for k, v in fields.items())  # fmt: skip
        return f"profile {self.name} ({self.purpose}): {execution}; where experiments are silent: {experiment}"


PROFILES: dict[str, Profile] = {
    "quick": Profile(
        name="quick",
        purpose="a first look: one cycle, no pauses",
        execution={
            "n_cycles": 1,
            "experiment_order": "sequential",
            "config_gap_seconds": 0.0,
            "cycle_gap_seconds": 0.0,
        },
        experiment={"warmup": {"n_warmup": 1, "thermal_floor_seconds": 30.0}, "baseline": {"strategy": "cached"}},
    ),
    "publication": Profile(
        name="publication",
        purpose="numbers to publish: five cycles, balanced order, thermal recovery",
        execution={
            "n_cycles": 5,
            "experiment_order": "latin_square",
            "config_gap_seconds": 60.0,
            "cycle_gap_seconds": 300.0,
        },
        experiment={"warmup": {"convergence_detection": True}, "baseline": {"strategy": "fresh"}},
    ),
}


def get_profile(name: str | None) -> Profile | None:
    if name is None:
        return None
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown profile '{name}' (one of {', '.join(PROFILES)})") from None
