"""How llem's messages count things: ``1 run is``, ``2 runs are``. A module of its own, below
every other, so that any of them (the study directory's, the results', Slurm's) may say a count."""

from __future__ import annotations


def plural(n: int, word: str) -> str:
    """``1 run``, ``2 runs``, ``1,000 runs``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def be(n: int, past: bool = False) -> str:
    """The verb after ``n`` things: ``is``/``are``, or ``was``/``were``."""
    if past:
        return "was" if n == 1 else "were"
    return "is" if n == 1 else "are"
