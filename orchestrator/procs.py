"""Whether a process on this host is alive: one answer for the runner, the reaper and claims."""

from __future__ import annotations

import os
from pathlib import Path


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs. A zombie (killed, not yet reaped by its parent: a worker llem
    has not waited for yet) is dead: it runs nothing and holds no run."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True  # /proc cannot say: signal 0 said it exists
    return state not in ("Z", "X")
