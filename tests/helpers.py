"""Run the real `llem` console script as a user would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def llem_executable() -> str:
    found = Path(sys.executable).parent / "llem"
    return str(found) if found.exists() else (shutil.which("llem") or "llem")


def run_llem(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    merged = {**os.environ, **(env or {})}
    return subprocess.run(
        [llem_executable(), *args], capture_output=True, text=True, env=merged, timeout=timeout, check=False
    )
