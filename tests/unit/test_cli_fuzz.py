"""At least 1,000 malformed study files through the CLI: one clear line and a non-zero exit each."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from llem.cli import main
from llem.errors import EXIT_CONFIG
from tests.conftest import REPO

SEEDS = [
    (REPO / "examples" / "quickstart.yaml").read_text(),
    """name: s
model: gpt2
engine: [transformers, vllm]
sweep:
  dtype: [float16, bfloat16]
  pytorch.compilation:
    - pytorch.torch_compile: false
    - pytorch.torch_compile: true
      pytorch.torch_compile_mode: default
  vllm.engine.block_size: [8, 16]
experiments:
  - engine: pytorch
    dataset: {n_prompts: 5}
study_execution: {n_cycles: 2, experiment_order: latin_square}
""",
    """model: gpt2
engine: tensorrt
tensorrt: {engine: tensorrt}   # quantisation is a build setting of a compiled engine
sweep:
  tensorrt.quant_config:
    - {}
    - &q
      tensorrt.quant_config.quant_algo: INT8
    - <<: *q
      tensorrt.quant_config.kv_cache_quant_algo: INT8
""",
]
JUNK = ["", ":", "- ", "[", "]", "{", "}", "&a", "*a", "<<:", "!!python/object:os.system", "\t", "'", '"', "~",
        "null", "-1", "1e999", "yes", "%", "@", "\\x00", "0x1F", "…"]  # fmt: skip


def mutate(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    for _ in range(rng.randint(1, 3)):
        choice = rng.randrange(6)
        i = rng.randrange(len(lines)) if lines else 0
        if choice == 0 and lines:  # replace a value with junk
            key, colon, _ = lines[i].partition(":")
            lines[i] = f"{key}{colon} {rng.choice(JUNK)}" if colon else lines[i] + rng.choice(JUNK)
        elif choice == 1 and lines:  # typo in a key
            lines[i] = re.sub(r"(\w)(\w)", r"\2\1", lines[i], count=1)
        elif choice == 2 and lines:  # break the indentation
            lines[i] = " " * rng.randint(0, 5) + lines[i].lstrip()
        elif choice == 3:  # insert junk characters
            pos = rng.randrange(len(text) + 1)
            lines = (text[:pos] + rng.choice(JUNK) + text[pos:]).splitlines()
        elif choice == 4 and lines:  # truncate
            lines = lines[: rng.randrange(len(lines))]
        else:  # change a number into something that is not one
            bad = rng.choice(["-3", "0", "abc", "[1]", "{}"])  # no backslashes: safe as a replacement
            lines = [re.sub(r"\b\d+\b", bad, line, count=1) for line in lines]
    return "\n".join(lines) + "\n"


def test_a_thousand_malformed_studies_each_get_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    rng = random.Random(2026)
    malformed = 0
    attempts = 0
    while malformed < 1000:
        attempts += 1
        assert attempts < 5000, "the mutator stopped producing malformed files"
        path = tmp_path / f"study{attempts}.yaml"
        path.write_text(mutate(rng.choice(SEEDS), rng), encoding="utf-8")
        code = main(["run", str(path), "--dry-run"])
        captured = capsys.readouterr()
        if code == 0:
            continue  # the mutation happened to be a valid study: it planned, nothing more to check
        malformed += 1
        assert code == EXIT_CONFIG, (path.read_text(), captured.err)
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1, (path.read_text(), captured.err)
        assert lines[0].startswith("llem: error: ")
        assert "Traceback" not in captured.err + captured.out
