"""A study's local prompt file (003 ``dataset.source: path.jsonl``), checked before any container.

The agent reads the file where the host mounted it (read-only); a relative path is relative
to the study file. Everything the agent would refuse is found out here, reading the file in
bounded pieces: a file that is not .jsonl (``/etc/passwd``), too large, with a line longer
than ``MAX_PROMPT_LINE_BYTES`` (never read whole), a line that is not a prompt, or fewer
prompts than ``n_prompts``. The built-in set is counted too.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

from llem_agent.contract import (
    BUILTIN_PROMPT_SETS,
    HUB_PROMPT_SETS,
    MAX_PROMPT_LINE_BYTES,
    PROMPT_TEXT_KEYS,
    ExperimentConfig,
    prompt_text,
)

from .errors import ConfigError

MAX_DATASET_BYTES = 1 << 30  # 1 GiB of prompts


def resolve_dataset(config: ExperimentConfig, base_dir: Path) -> Path | None:
    """The host path of the experiment's .jsonl prompt file, checked; None for a named set."""
    source = config.dataset.source
    if source in BUILTIN_PROMPT_SETS:
        available = _builtin_count(source)
        if config.dataset.n_prompts > available:
            raise ConfigError(
                f"the {source} prompt set has {available} prompts but dataset.n_prompts is "
                f"{config.dataset.n_prompts}; use a .jsonl file of your own for more"
            )
        return None
    if source in HUB_PROMPT_SETS:  # counted where the hub is reachable: in the agent
        return None
    path = Path(source).expanduser()
    path = path if path.is_absolute() else base_dir / path
    known = sorted([*BUILTIN_PROMPT_SETS, *HUB_PROMPT_SETS])
    if path.suffix != ".jsonl":
        raise ConfigError(f"dataset.source '{source}' is neither a .jsonl file nor one of {known}")
    if not path.is_file():
        raise ConfigError(f"dataset file not found: {path}")
    info = path.stat()
    size = info.st_size
    if size > MAX_DATASET_BYTES:
        raise ConfigError(f"dataset file {path} is {size / 2**30:.1f} GiB; llem reads at most 1 GiB of prompts")
    count = _count_prompts(path.resolve(), size, info.st_mtime_ns)  # once per file, not per experiment
    if count < config.dataset.n_prompts:
        raise ConfigError(
            f"dataset file {path} has {count} prompts but dataset.n_prompts is {config.dataset.n_prompts}"
        )
    return path.resolve()


@functools.cache
def _builtin_count(source: str) -> int:
    """Prompts in a set shipped with the agent package (the host installs the same package)."""
    text = resources.files("llem_agent.data").joinpath(BUILTIN_PROMPT_SETS[source]).read_text("utf-8")
    return sum(1 for line in text.splitlines() if line.strip())


@functools.lru_cache(maxsize=32)
def _count_prompts(path: Path, size: int, mtime_ns: int) -> int:
    """Prompts in ``path``, each line checked; cached by the file's size and mtime."""
    count = read = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(iter(lambda: handle.readline(MAX_PROMPT_LINE_BYTES + 1), b""), start=1):
            read += len(raw)
            if read > MAX_DATASET_BYTES:  # its size said less (a /proc file says 0): never read on
                raise ConfigError(f"{path}: more than 1 GiB of prompts; llem reads at most 1 GiB")
            if len(raw) > MAX_PROMPT_LINE_BYTES:
                raise ConfigError(
                    f"{path}:{number}: a line of more than {MAX_PROMPT_LINE_BYTES // 2**20} MiB; one prompt per line, "
                    "each at most 1 MiB (it is truncated to max_input_tokens anyway)"
                )
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ConfigError(f"{path}:{number}: not JSON; a .jsonl dataset has one JSON value per line") from None
            if not prompt_text(record):
                raise ConfigError(
                    f"{path}:{number}: expected a string or an object with one of {list(PROMPT_TEXT_KEYS)}"
                )
            count += 1
    return count
