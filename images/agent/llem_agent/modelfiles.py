"""Facts read from a model's files without loading it: the parameter count from safetensors
headers (engines that load weights in worker processes do not expose their model object)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path


def local_model_dir(source: str) -> Path | None:
    """``source`` as a directory: a path, or a hub id already in the Hugging Face cache."""
    if Path(source).is_dir():
        return Path(source)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, local_files_only=True))
    except Exception:  # not cached, or no huggingface_hub: the count is unknown, not an error
        return None


def count_parameters(model_dir: Path) -> int | None:
    """Sum of the element counts of every tensor in the directory's safetensors files."""
    total, found = 0, False
    for path in sorted(model_dir.glob("*.safetensors")):
        with path.open("rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        for name, entry in header.items():
            if name != "__metadata__":
                total += math.prod(entry["shape"])
                found = True
    return total if found else None
