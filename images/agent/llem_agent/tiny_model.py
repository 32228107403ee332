"""Make random-initialised models with a locally trained BPE tokenizer, where no hub can be reached.

``python -m llem_agent.tiny_model OUT_DIR``: the tiny GPT-2 of the demo, the tests and the
benchmarks. ``--arch llama --size tiny``: a tiny Llama (head dim 64, as vLLM's CPU backend needs);
``--arch llama --size 1b``: a Llama-style model of about 1.1B parameters (TinyLlama's shape:
22 layers, hidden 2048, grouped-query attention with 4 KV heads), built on the GPU when there is
one, for ``make gpu-check``. Deterministic for a given seed; weights are saved as safetensors.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path
from typing import Any

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


# Llama shapes: (layers, hidden, intermediate, attention heads, KV heads).
# layers, hidden, intermediate, heads, KV heads. tiny-tp: two KV heads, so that tensor
# parallelism can split them over two ranks (tiny's one cannot be split).
LLAMA_SIZES = {"tiny": (2, 128, 256, 2, 1), "tiny-tp": (2, 128, 256, 2, 2), "1b": (22, 2048, 5632, 32, 4)}


def _bpe_tokenizer(vocab_size: int) -> object:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_corpus(), vocab_size=vocab_size, min_frequency=1, special_tokens=[EOS])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=EOS)


def make_llama(out_dir: Path, size: str = "tiny", vocab_size: int = 4096, seed: int = 0) -> Path:
    """A random-initialised Llama of ``size`` (LLAMA_SIZES), saved in bfloat16 (float32 for tiny)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer: Any = _bpe_tokenizer(vocab_size)
    layers, hidden, intermediate, heads, kv_heads = LLAMA_SIZES[size]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    tiny = size.startswith("tiny")
    dtype = torch.float32 if tiny else torch.bfloat16
    device = "cuda" if not tiny and torch.cuda.is_available() else "cpu"
    with torch.device(device):  # a 1B model initialises in seconds on a GPU, minutes on a CPU
        model = LlamaForCausalLM(config).to(dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    for path in out_dir.iterdir():
        path.chmod(0o644)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llem_agent.tiny_model", description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-embd", type=int, default=64)
    parser.add_argument("--vocab-size", type=int, default=None, help="default: 512 (gpt2), 4096 (llama)")
    parser.add_argument("--arch", choices=("gpt2", "llama"), default="gpt2")
    parser.add_argument("--size", choices=sorted(LLAMA_SIZES), default="tiny", help="llama only")
    args = parser.parse_args(argv)
    if args.arch == "llama":
        path = make_llama(args.out_dir, args.size, args.vocab_size or 4096)
    else:
        path = make_tiny_model(args.out_dir, args.n_layer, args.n_embd, args.vocab_size or 512)
    print(f"{args.arch} model written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
