"""The host's own facts, recorded once per study as ``host.json`` (the agent records the
container's facts in each result)."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
from pathlib import Path
from typing import Any

from . import __version__
from .devices import discover_gpus


def host_facts(docker: dict[str, Any], images: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Hostname, OS, CPU, memory, GPUs (as the host's NVML sees them), Docker and image ids.
    Simulated GPUs (``--simulate-gpus``) are listed as what they are: ``gpus_simulated``."""
    cpu = None
    with contextlib.suppress(OSError):  # the container side has its own reader (llem_agent.environment)
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    memory_mb = None
    gpus = discover_gpus()
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    return {
        "llem_version": __version__,
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "memory_mb": memory_mb,
        "gpus": [
            {"index": g.index, "name": g.name, "uuid": g.uuid} | ({"simulated": True} if g.simulated else {})
            for g in gpus
        ],
        "gpus_simulated": any(g.simulated for g in gpus),
        "docker": docker,
        "images": images,
    }
