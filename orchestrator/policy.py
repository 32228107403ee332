"""Study-level policies: the circuit breaker and the wall-clock limit (003 Robustness Controls)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


@dataclass
class CircuitBreaker:
    """Closed -> open after ``threshold`` consecutive failures -> half-open probe after the cooldown.

    ``threshold`` 0 disables the breaker; 1 is fail-fast (abort on the first failure, no
    cooldown). A probe that succeeds closes the breaker; one that fails aborts the study.
    """

    threshold: int
    cooldown_s: float
    state: BreakerState = "closed"
    consecutive_failures: int = 0

    def record(self, succeeded: bool) -> Literal["continue", "cooldown", "abort"]:
        """Feed one run's outcome; says what the study does next."""
        if succeeded:
            self.state, self.consecutive_failures = "closed", 0
            return "continue"
        self.consecutive_failures += 1
        if self.threshold == 0:
            return "continue"
        if self.state == "half_open" or self.threshold == 1:
            self.state = "open"
            return "abort"
        if self.consecutive_failures >= self.threshold:
            self.state = "open"
            return "cooldown"
        return "continue"

    def probe(self) -> None:
        """The cooldown is over: the next run is the half-open probe."""
        self.state = "half_open"


@dataclass
class WallClock:
    """The study's time limit; None means no limit."""

    limit_s: float | None
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def remaining_s(self) -> float | None:
        return None if self.limit_s is None else self.limit_s - (self.clock() - self.started)

    def expired(self) -> bool:
        remaining = self.remaining_s()
        return remaining is not None and remaining <= 0
