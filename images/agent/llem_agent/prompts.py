"""Prompt sources: the built-in set shipped with the package, a local .jsonl, or a hub set."""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path

from llem_agent.contract import DatasetConfig

BUILTIN_SETS = {"builtin": "builtin_prompts.jsonl"}
HUB_SETS = {"aienergyscore": "AIEnergyScore/text_generation"}
_TEXT_KEYS = ("prompt", "text", "question", "input")


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
        text = record if isinstance(record, str) else None
        if isinstance(record, dict):
            text = next((record[k] for k in _TEXT_KEYS if isinstance(record.get(k), str)), None)
        if not text:
            raise DatasetError(f"{origin}:{number}: expected a string or an object with one of {list(_TEXT_KEYS)}")
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


def load_prompts(dataset: DatasetConfig, seed: int, base_dir: Path | None = None) -> list[str]:
    """Return exactly ``dataset.n_prompts`` prompts in the configured order.

    ``interleaved`` keeps the source order, ``grouped`` sorts by length so batches hold
    prompts of similar size, ``shuffled`` permutes with ``seed``.
    """
    source = dataset.source
    if source in BUILTIN_SETS:
        text = resources.files("llem_agent.data").joinpath(BUILTIN_SETS[source]).read_text("utf-8")
        prompts = _read_jsonl(text.splitlines(), f"built-in set '{source}'")
    elif source in HUB_SETS:
        prompts = _read_hub_set(HUB_SETS[source])
    else:
        path = Path(source)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if path.suffix != ".jsonl":
            known = sorted([*BUILTIN_SETS, *HUB_SETS])
            raise DatasetError(f"dataset source '{source}' is neither a .jsonl file nor one of {known}")
        if not path.is_file():
            raise DatasetError(f"dataset file not found: {path}")
        prompts = _read_jsonl(path.read_text(encoding="utf-8").splitlines(), str(path))
    if len(prompts) < dataset.n_prompts:
        raise DatasetError(f"dataset '{source}' has {len(prompts)} prompts but n_prompts is {dataset.n_prompts}")
    prompts = prompts[: dataset.n_prompts]
    if dataset.order == "grouped":
        prompts = sorted(prompts, key=len)
    elif dataset.order == "shuffled":
        random.Random(seed).shuffle(prompts)
    return prompts
