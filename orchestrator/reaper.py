"""Clean up after a llem process that died (SIGKILL, power loss): its containers and its manifest.

Containers carry the host, pid and study directory of the llem process that started them.
One whose process is gone is an orphan: it is removed, and the run it was measuring is
marked interrupted so ``--resume`` (or any worker of the study) runs it again. The runner
also removes an orphan of the very run it is about to start (same container name), so a
worker that takes over a run from one killed -9 never measures beside its container. Device
locks need no cleanup: the kernel released them when the process died.
"""

from __future__ import annotations

import socket
from pathlib import Path

from .claims import ClaimBoard
from .container import LABEL_HOST, LABEL_HOST_PID, LABEL_RUN, LABEL_STUDY_DIR
from .docker_runner import DockerRunner
from .errors import LlemError
from .manifest import ManifestStore
from .procs import process_alive
from .studydir import final_status


def mark_interrupted(study_dir: Path, run_id: str) -> None:
    """Record in the manifest that the orphan's run never finished, and that the study stopped
    unless other workers still hold runs of it (they go on, and the last of them concludes)."""
    try:
        store = ManifestStore.attach(study_dir)
        entry = next((r for r in store.refresh().runs if r.run_id == run_id), None)
        if entry is not None and entry.status == "running":
            store.update_run(run_id, status="interrupted")
        statuses = [e.status for e in store.manifest.runs]
        final = final_status(statuses, "interrupted", held=ClaimBoard(study_dir).live_claims())
        if store.manifest.status == "running" and final is not None:
            store.set_status(final.status, detail=final.detail)
    except (OSError, ValueError, LlemError):
        return


def reap_orphans(runner: DockerRunner) -> list[str]:
    """Remove this host's llem containers whose llem process is gone; return their names."""
    host = socket.gethostname()
    reaped = []
    for container in runner.managed_containers():
        labels = container.labels or {}
        if labels.get(LABEL_HOST) != host or not labels.get(LABEL_HOST_PID, "").isdigit():
            continue
        if process_alive(int(labels[LABEL_HOST_PID])):
            continue
        if not runner.remove_gone(container):  # another llem reaped it first
            continue
        reaped.append(container.name or container.id or "?")
        if labels.get(LABEL_STUDY_DIR) and labels.get(LABEL_RUN):
            mark_interrupted(Path(labels[LABEL_STUDY_DIR]), labels[LABEL_RUN])
    return reaped
