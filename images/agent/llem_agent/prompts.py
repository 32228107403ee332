"""Prompt sources: the built-in set shipped with the package, a local .jsonl, or a hub set."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from llem_agent.contract import (
    BUILTIN_PROMPT_SETS,
    HUB_PROMPT_SETS,
    MAX_PROMPT_LINE_BYTES,
    PROMPT_TEXT_KEYS,
    DatasetConfig,
    prompt_text,
)


class DatasetError(ValueError):
    """The configured prompt source cannot be read or has too few prompts."""


def _read_jsonl(lines: list[str], origin: str) -> list[str]:
    prompts: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{origin}:{number}: not valid JSON ({exc.msg})") from None
        text = prompt_text(record)
        if not text:
            raise DatasetError(
                f"{origin}:{number}: expected a string or an object with one of {list(PROMPT_TEXT_KEYS)}"
            )
        prompts.append(text)
    return prompts


def _read_hub_set(repo_id: str) -> list[str]:
    # Only reached on machines with hub access; huggingface_hub ships with transformers.
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(repo_id=repo_id, repo_type="dataset", allow_patterns=["*.jsonl", "*.json"]))
    files = sorted(folder.rglob("*.jsonl"))
    if not files:
        raise DatasetError(f"hub dataset {repo_id} has no .jsonl file llem can read")
    return _read_jsonl(files[0].read_text(encoding="utf-8").splitlines(), repo_id)


def _read_file(path: Path) -> list[str]:
    """A local .jsonl, line by line; a line longer than MAX_PROMPT_LINE_BYTES is refused unread."""
    lines = []
    with path.open("rb") as handle:
        for number, raw in enumerate(iter(lambda: handle.readline(MAX_PROMPT_LINE_BYTES + 1), b""), start=1):
            if len(raw) > MAX_PROMPT_LINE_BYTES:
                raise DatasetError(f"{path}:{number}: a line of more than {MAX_PROMPT_LINE_BYTES} bytes")
            lines.append(raw.decode("utf-8", errors="replace"))
    return _read_jsonl(lines, str(path))


WarmupSource = Literal["held_out", "marked", "measured"]


@dataclass(frozen=True)
class PromptSets:
    """The measured prompts and the pool warm-up draws from.

    ``warmup_source`` says how the pool was made: ``held_out`` (the source's prompts after the
    measured ones), ``marked`` (the source has no prompt to spare: the measured prompts, each
    behind a distinct warm-up marker, so no warm-up prompt shares a first token block with a
    measured one and a prefix cache cannot serve the window from warm-up), or ``measured``
    (``warmup.prefix_cache: warm``: the measured prompts themselves, on purpose).
    """

    measured: list[str]
    warmup: list[str]
    warmup_source: WarmupSource


def warmup_marker(index: int) -> str:
    """The text put before the ``index``-th marked warm-up prompt: distinct per prompt, and
    distinct from every measured prompt's start."""
    return f"[llem warm-up {index}] "


def load_prompt_sets(
    dataset: DatasetConfig,
    seed: int,
    base_dir: Path | None = None,
    mounted: str | None = None,
    *,
    warm_cache: bool = False,
) -> PromptSets:
    """The measured prompts (:func:`load_prompts`) and warm-up's pool, disjoint from them.

    Built-in sets and ``.jsonl`` files split alike: the first ``n_prompts`` of the source are
    measured, the prompts after them are warm-up's; a source with none left over warms up on
    marked copies of the measured prompts. ``warm_cache``: warm up on the measured prompts.
    """
    everything = _read_source(dataset, base_dir, mounted)
    measured = _measured(everything, dataset, seed)
    if warm_cache:
        return PromptSets(measured, list(measured), "measured")
    held = everything[dataset.n_prompts :]
    if held:
        return PromptSets(measured, held, "held_out")
    return PromptSets(measured, [warmup_marker(i) + p for i, p in enumerate(measured)], "marked")


def load_prompts(
    dataset: DatasetConfig, seed: int, base_dir: Path | None = None, mounted: str | None = None
) -> list[str]:
    """Return exactly ``dataset.n_prompts`` prompts in the configured order.

    ``mounted``: where the host put the .jsonl file of ``dataset.source`` (its container mount,
    or its host path with the local runner); a relative source is otherwise read from ``base_dir``.

    ``interleaved`` keeps the source order, ``grouped`` sorts by length so batches hold
    prompts of similar size, ``shuffled`` permutes with ``seed``.
    """
    return _measured(_read_source(dataset, base_dir, mounted), dataset, seed)


def _measured(everything: list[str], dataset: DatasetConfig, seed: int) -> list[str]:
    if len(everything) < dataset.n_prompts:
        raise DatasetError(
            f"dataset '{dataset.source}' has {len(everything)} prompts but n_prompts is {dataset.n_prompts}"
        )
    prompts = everything[: dataset.n_prompts]
    if dataset.order == "grouped":
        prompts = sorted(prompts, key=len)
    elif dataset.order == "shuffled":
        random.Random(seed).shuffle(prompts)
    return prompts


def _read_source(dataset: DatasetConfig, base_dir: Path | None, mounted: str | None) -> list[str]:
    """Every prompt of ``dataset.source``, in source order."""
    source = dataset.source
    if source in BUILTIN_PROMPT_SETS:
        text = resources.files("llem_agent.data").joinpath(BUILTIN_PROMPT_SETS[source]).read_text("utf-8")
        prompts = _read_jsonl(text.splitlines(), f"built-in set '{source}'")
    elif source in HUB_PROMPT_SETS:
        prompts = _read_hub_set(HUB_PROMPT_SETS[source])
    else:
        path = Path(mounted) if mounted else Path(source)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if path.suffix != ".jsonl":
            known = sorted([*BUILTIN_PROMPT_SETS, *HUB_PROMPT_SETS])
            raise DatasetError(f"dataset source '{source}' is neither a .jsonl file nor one of {known}")
        if not path.is_file():
            raise DatasetError(f"dataset file not found: {path}")
        prompts = _read_file(path)
    return prompts
