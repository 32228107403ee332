"""Where a model lives on the host, and what its local files say about its size.

Read with the standard library only (config.json, safetensors headers): the host never
imports transformers or torch.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from llem_agent.contract import ExperimentConfig

from .container import NONROOT
from .errors import ConfigError
from .yamlsafe import read_text

_DTYPE_BYTES = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0}
# Bytes per weight of the quantisation methods the estimate knows (the others: as their dtype).
_QUANT_WEIGHT_BYTES = {"bnb_4bit": 0.5, "bnb_8bit": 1.0}
_OVERHEAD = 0.15  # activations, CUDA context, allocator slack: 15% of weights (002)


def hf_home() -> Path:
    """The host's Hugging Face cache: HF_HOME, else the user config's output.model_cache_dir,
    else ~/.cache/huggingface."""
    from .userconfig import load_user_config

    return load_user_config().hf_home


def resolve_adapter_dir(config: ExperimentConfig, base_dir: Path) -> Path | None:
    """The host directory of a local LoRA adapter (``lora.adapter_path``, relative to the study)."""
    if config.lora is None or config.lora.adapter_path is None:
        return None
    path = Path(config.lora.adapter_path).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not (path / "adapter_config.json").is_file():
        raise ConfigError(f"lora.adapter_path: no LoRA adapter (adapter_config.json) in {path}")
    return path.resolve()


def resolve_model_dir(model: str, base_dir: Path) -> Path | None:
    """The host directory of a local model, or None for a hub id.

    A value that looks like a path (absolute, ``./``, ``../``, ``~``) must exist; any other
    value is a local directory if one exists relative to the study file, else a hub id. A
    directory must hold a model (``config.json``): found out here, not inside a container.
    """
    expanded = Path(model).expanduser()
    candidate = expanded if expanded.is_absolute() else base_dir / expanded
    if candidate.is_dir():
        resolved = candidate.resolve()
        if not (resolved / "config.json").is_file():
            where = f"{candidate} (-> {resolved})" if resolved != candidate.absolute() else str(candidate)
            raise ConfigError(
                f"model directory {where} holds no model (no config.json); give a directory written by "
                "save_pretrained, or a Hugging Face id"
            )
        return resolved
    if model.startswith(("/", "./", "../", "~")):
        raise ConfigError(f"model directory not found: {candidate}")
    return None


def resolve_trt_engine_dir(config: ExperimentConfig, base_dir: Path) -> Path | None:
    """The host directory of a prebuilt engine (``tensorrt.engine_path``, relative to the study),
    where the engine's section names one."""
    engine_path = config.engine_section().prebuilt_engine()
    if engine_path is None:
        return None
    path = Path(engine_path).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not (path / "config.json").is_file():
        raise ConfigError(f"{config.engine}.engine_path: no TensorRT engine (config.json) in {path}")
    return path.resolve()


_SYSTEM_DIRS = frozenset(Path(p) for p in ("/", "/etc", "/usr", "/var", "/bin", "/lib", "/opt", "/root", "/home"))


def check_hf_cache_writable(hf_home: Path, host_uid: int, model: str) -> None:
    """The agent downloads hub models into the mounted Hugging Face cache: it must be able to
    write there. As root, llem runs its agent as uid 65532 in the root group, which a cache
    made by root (0755) shuts out; as anyone else, the agent is that user."""
    hf_home = hf_home.expanduser()
    targets = [p for p in (hf_home, hf_home / "hub") if p.exists()]
    if not targets:
        return  # llem creates it, writable for the agent
    for path in targets:
        info = path.stat()
        mode = stat.S_IMODE(info.st_mode)
        if host_uid == 0:
            writable = (
                (info.st_uid == int(NONROOT) and mode & stat.S_IWUSR)
                or (info.st_gid == 0 and mode & stat.S_IWGRP)
                or mode & stat.S_IWOTH
            )
            who = f"llem's agent (uid {NONROOT}, group root)"
        else:
            writable = os.access(path, os.W_OK | os.X_OK)
            who = f"you (uid {host_uid})"
        if writable:
            continue
        fix = "point HF_HOME (or output.model_cache_dir) at a directory you own"
        if hf_home.resolve() not in _SYSTEM_DIRS and host_uid == 0:
            fix = f"run `chgrp -R 0 {hf_home} && chmod -R g+rwX {hf_home}`, or " + fix
        raise ConfigError(
            f"the Hugging Face cache {path} (owner uid {info.st_uid}, mode {mode:o}) is not writable by {who}, "
            f"and {model} must be downloaded into it: {fix}"
        )


_MAX_FILES_CHECKED = 10_000  # a model has tens of files; stop long before a filesystem walk


def check_readable_by_agent(folder: Path, host_uid: int, only: Path | None = None) -> None:
    """When llem runs as root its agent does not: every model file must be group- or world-readable.

    Walks ``folder`` only: symbolic links to directories are not followed (a link to ``/`` must
    not turn this into a walk of the filesystem); a linked file is judged by its target's mode.
    """
    if host_uid != 0:
        return
    checked = 0
    walk = [(str(only.parent), [], [only.name])] if only is not None else os.walk(folder, followlinks=False)
    for root, dirs, files in walk:
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            checked += 1
            if checked > _MAX_FILES_CHECKED:
                return
            try:
                mode = path.stat().st_mode
            except OSError:
                continue  # a dangling link: the agent's load says what is missing
            if stat.S_ISREG(mode) and not mode & (stat.S_IRGRP | stat.S_IROTH):
                fix = f"chmod -R a+rX {folder}" if folder.resolve() not in _SYSTEM_DIRS else "copy it elsewhere"
                fix = f"chmod a+r {path}" if only is not None else fix
                raise ConfigError(
                    f"{path} is readable only by its owner (mode {stat.S_IMODE(mode):o}); llem's agent runs "
                    f"unprivileged, so make the model readable: {fix}"
                )


def cached_snapshot(model: str, hf_home: Path) -> Path | None:
    """The newest snapshot of a hub model in the local Hugging Face cache, if any."""
    snapshots = hf_home / "hub" / f"models--{model.replace('/', '--')}" / "snapshots"
    found = [p for p in snapshots.glob("*") if (p / "config.json").is_file()] if snapshots.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


@dataclass(frozen=True)
class ModelFacts:
    n_params: int
    n_layers: int
    n_kv_heads: int
    head_dim: int
    params_from: str


_MAX_SAFETENSORS_HEADER = 100_000_000  # what the safetensors library itself reads at most


def _safetensors_params(folder: Path) -> int | None:
    """Parameters counted from the safetensors headers; None when there are none, or when one is
    damaged (the agent's load says what is wrong): a header's size is read before the header,
    and a damaged one must not be a read of 2^63 bytes."""
    total, files = 0, sorted(folder.glob("*.safetensors"))
    try:
        for path in files:
            with path.open("rb") as handle:
                (size,) = struct.unpack("<Q", handle.read(8))
                if size > _MAX_SAFETENSORS_HEADER:
                    return None
                header = json.loads(handle.read(size))
            total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    except (OSError, ValueError, struct.error, AttributeError, KeyError, TypeError):
        return None
    return total if files else None


def _first(config: dict[str, object], *names: str) -> int | None:
    for name in names:
        value = config.get(name)
        if isinstance(value, int):
            return value
    return None


@lru_cache(maxsize=64)
def model_facts(folder: Path) -> ModelFacts | None:
    """Parameter count and KV-cache geometry from local files; None when they are missing."""
    try:  # bounded as a study file is: a config.json linked to /proc/self/pagemap is not read whole
        config = json.loads(read_text(folder / "config.json", "model config") or "null")
    except (ConfigError, ValueError, RecursionError):
        return None
    config = config.get("text_config", config) if isinstance(config, dict) else {}
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _first(config, "hidden_size", "n_embd", "d_model")
    heads = _first(config, "num_attention_heads", "n_head")
    if not (layers and hidden and heads):
        return None
    kv_heads = _first(config, "num_key_value_heads") or heads
    head_dim = _first(config, "head_dim") or hidden // heads
    params = _safetensors_params(folder)
    source = "safetensors"
    if params is None:  # 12 h^2 per layer (attention + 4h MLP) plus embeddings
        vocab = _first(config, "vocab_size") or 0
        params, source = 12 * layers * hidden * hidden + vocab * hidden, "config.json"
    return ModelFacts(params, layers, kv_heads, head_dim, source)


@dataclass(frozen=True)
class VramEstimate:
    weights_gb: float
    kv_cache_gb: float
    overhead_gb: float
    total_gb: float
    params_from: str


def _batch(config: ExperimentConfig) -> int:
    return config.engine_section().max_batch() or 1


def estimate_vram(config: ExperimentConfig, facts: ModelFacts) -> VramEstimate:
    """002's estimate: weights + KV cache (2 x layers x kv width x sequence x batch) + 15%.

    The KV width uses the key/value heads, so grouped-query attention is not overcounted.
    Without an explicit dtype the GPU default (bfloat16) is assumed.
    """
    weight_bytes = _QUANT_WEIGHT_BYTES.get(config.quantisation() or "", _DTYPE_BYTES[config.dtype or "bfloat16"])
    kv_bytes = _DTYPE_BYTES[config.dtype or "bfloat16"]
    sequence = (config.max_input_tokens or 256) + (config.max_output_tokens or 256)
    weights = facts.n_params * weight_bytes / 1e9
    kv = 2 * facts.n_layers * facts.n_kv_heads * facts.head_dim * sequence * _batch(config) * kv_bytes / 1e9
    overhead = weights * _OVERHEAD
    return VramEstimate(weights, kv, overhead, weights + kv + overhead, facts.params_from)
