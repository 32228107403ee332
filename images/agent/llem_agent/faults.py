"""Fault injection for the fault-tolerance tests. Off unless LLEM_FAULT_INJECTION is set.

Values: ``crash`` (exit at once, no error.json), ``error`` (raise), ``hang`` (stop all
progress), ``oom`` (allocate until the container's memory limit kills it), ``corrupt``
(write a broken result.json), ``slow_start:SECONDS`` (a long, silent load),
``follower_error`` (a tensor-parallel follower raises once its shard is loaded). A suffix
``@RUN_ID`` limits the fault to that run, e.g. ``crash@e001-c1``.
"""

from __future__ import annotations

import os
import threading
import time

ENV = "LLEM_FAULT_INJECTION"


def active(run_id: str) -> str:
    """The fault configured for ``run_id``, or an empty string."""
    fault, _, target = os.environ.get(ENV, "").partition("@")
    return fault if not target or target == run_id else ""


def at_phase(phase: str, run_id: str) -> None:
    """Act out the configured fault when the agent enters ``phase``."""
    fault = active(run_id)
    if not fault:
        return
    if phase == "load" and fault.startswith("slow_start:"):
        time.sleep(float(fault.split(":", 1)[1]))
    elif phase == "measure":
        if fault == "crash":
            os._exit(3)
        if fault == "error":
            raise RuntimeError("injected fault (LLEM_FAULT_INJECTION=error)")
        if fault == "hang":
            threading.Event().wait()
        if fault == "oom":
            hog = []
            while True:
                hog.append(bytearray(64 * 2**20))


def corrupt_result(run_id: str) -> bool:
    return active(run_id) == "corrupt"


def follower_fails(run_id: str) -> None:
    """A tensor-parallel follower, its shard loaded: raise where the fault asks it to."""
    if active(run_id) == "follower_error":
        raise RuntimeError("injected fault (LLEM_FAULT_INJECTION=follower_error)")
