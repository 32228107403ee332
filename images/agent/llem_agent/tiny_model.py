"""Make a tiny random-initialised GPT-2 with a locally trained BPE tokenizer.

Used by the demo, the tests and the benchmarks, where no model hub can be reached:
``python -m llem_agent.tiny_model OUT_DIR``. Deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

EOS = "<|endoftext|>"


def _corpus() -> list[str]:
    text = resources.files("llem_agent.data").joinpath("builtin_prompts.jsonl").read_text("utf-8")
    return [json.loads(line)["prompt"] for line in text.splitlines() if line.strip()]


def make_tiny_model(out_dir: Path, n_layer: int = 2, n_embd: int = 64, vocab_size: int = 512, seed: int = 0) -> Path:
    """Write model and tokenizer to ``out_dir`` (``save_pretrained`` layout) and return it."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    torch.manual_seed(seed)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_corpus(), vocab_size=vocab_size, min_frequency=1, special_tokens=[EOS])
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, unk_token=EOS)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=1024,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=max(1, n_embd // 32),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    for path in out_dir.iterdir():  # safetensors writes 0600; the agent may run as another user
        path.chmod(0o644)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llem_agent.tiny_model", description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-embd", type=int, default=64)
    parser.add_argument("--vocab-size", type=int, default=512)
    args = parser.parse_args(argv)
    path = make_tiny_model(args.out_dir, args.n_layer, args.n_embd, args.vocab_size)
    print(f"tiny model written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
