"""Tensor parallelism for the PyTorch agent (``pytorch.tp_plan: auto``, ``tp_size: N``).

A run is N agent processes under torchrun, one per GPU (gloo on the CPU, NCCL on GPUs), each
holding its shard of the model (transformers' own plan for it). Rank 0 is the agent that
measures: heartbeat, energy over all the run's GPUs, ``result.json``. The other ranks load their
shard and follow: before each ``generate`` call rank 0 hands its inputs to them (a broadcast),
so every rank makes the same collective calls whatever the measurement does between them
(warm-up, thermal floor, baseline). On success rank 0 tells them to stop; when any rank fails,
torchrun ends the others, and the agent's parent reports the first failure (a follower writes
``error.rank<N>.json`` for it).

The agent started by the host is the parent: it starts torchrun with N copies of itself, passes
on SIGTERM and waits (:func:`launch`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from llem_agent.contract import ExperimentConfig

LAUNCHED_ENV = "LLEM_TP_LAUNCHED"  # set for the ranks torchrun starts
# The followers wait in a broadcast while rank 0 measures an idle baseline or a thermal floor:
# the process group's timeout must outlast any of them (NCCL's default is ten minutes).
GROUP_TIMEOUT = timedelta(hours=6)
_STOP = "stop"


def processes(config: ExperimentConfig) -> int:
    """Agent processes one run of ``config`` starts (N under tensor parallelism, else 1)."""
    return config.engine_section().processes()


def launched() -> bool:
    """This process is one of the ranks torchrun started for a tensor-parallel run."""
    return os.environ.get(LAUNCHED_ENV) == "1"


def rank() -> int:
    return int(os.environ.get("RANK", "0")) if launched() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if launched() else 0


def follower_error_file(out_dir: Path, index: int) -> Path:
    return out_dir / f"error.rank{index}.json"


def launch(argv: Sequence[str], n: int) -> tuple[int, int | None]:
    """Run the agent as ``n`` ranks under torchrun (one node, a rendezvous on loopback) and wait;
    SIGTERM and Ctrl-C are passed on (torchrun ends its ranks). Returns torchrun's exit code and
    the signal passed on, if one was."""
    # On loopback by address: a run's container has no network, and its hostname may not resolve
    # (torchrun --standalone's rendezvous and gloo both look it up).
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={n}",
               "--master-addr=127.0.0.1", f"--master-port={_free_port()}", "-m", "llem_agent", *argv]  # fmt: skip
    env = {**os.environ, LAUNCHED_ENV: "1"}
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    env.setdefault("NCCL_SOCKET_IFNAME", "lo")  # NCCL's bootstrap; its data goes over NVLink / PCIe
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))  # torchrun's default: 1
    proc = subprocess.Popen(command, env=env)

    received: list[int] = []

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        proc.send_signal(signum)

    before = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait(), (received[0] if received else None)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def init_group(device: str) -> None:
    """The ranks' process group, before transformers shards the model over it (it uses one that
    is there): gloo on the CPU, NCCL on GPUs, each rank on its own GPU."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if device == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=GROUP_TIMEOUT)


def _broadcast(message: Any) -> Any:
    import torch.distributed as dist

    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def lead(inputs: dict[str, Any]) -> None:
    """Rank 0: hand the inputs of the generate call it is about to make to the followers."""
    _broadcast(("generate", {k: v.cpu() for k, v in inputs.items()}))


def follow(generate: Any, device: str) -> None:
    """A follower: make each generate call rank 0 hands over, until it says stop."""
    while True:
        message = _broadcast(None)
        if message is None or message[0] == _STOP:
            return
        generate({k: v.to(device) for k, v in message[1].items()})


def stop_followers() -> None:
    """Rank 0, after a run that succeeded: the followers' loops end (a failed run's ranks are
    ended by torchrun instead: a broadcast could meet them inside another collective)."""
    import torch.distributed as dist

    if launched() and rank() == 0 and dist.is_available() and dist.is_initialized():
        _broadcast((_STOP, None))
