"""PyTorch tensor parallelism (``pytorch.tp_plan: auto``, ``tp_size: 2``) on the CPU: real
torchrun ranks over gloo, a real (tiny, random-initialised) Llama whose two KV heads split over
two ranks. On GPUs the same code runs over NCCL, one GPU per rank (not run here: no GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytest.importorskip("torch")
pytest.importorskip("transformers")

AGENT = str(REPO / "images" / "agent")
PROMPTS = ["the quick brown fox", "a b c d e f"]

# Run by each rank under torchrun: the agent's engine loads its shard; rank 0 leads a generate
# call through the engine and one straight through the model (as engine.generate does), the
# follower follows; each rank writes what it holds and what came out.
RANK_SCRIPT = """
import json, os, sys, torch
from llem_agent.contract import ExperimentConfig
from llem_agent.engines import tensor_parallel
from llem_agent.engines.pytorch import PyTorchEngine
model, out = sys.argv[1], sys.argv[2]
cfg = ExperimentConfig.model_validate({"model": model, "max_output_tokens": 8,
    "decoder": {"do_sample": False, "min_new_tokens": 8},
    "pytorch": {"batch_size": 2, "tp_plan": "auto", "tp_size": 2}})
engine = PyTorchEngine()
engine.load(cfg, model)
weight = engine._model.model.layers[0].self_attn.k_proj.weight
local = weight.to_local() if hasattr(weight, "to_local") else weight
facts = {"rank": tensor_parallel.rank(), "k_proj_local_rows": int(local.shape[0])}
if tensor_parallel.rank() == 0:
    enc = engine.prepare(%r)
    observation = engine.generate(enc)
    tensor_parallel.lead(enc)
    with torch.inference_mode():
        ids = engine._model.generate(**enc, **engine._gen_kwargs)
    facts |= {"output_tokens": observation.output_tokens, "ids": ids.tolist(), "effective": engine.effective()}
    tensor_parallel.stop_followers()
else:
    engine.follow()
with open(os.path.join(out, f"rank{facts['rank']}.json"), "w") as f:
    json.dump(facts, f)
""" % (PROMPTS,)  # noqa: UP031


@pytest.fixture(scope="module")
def tp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llem_agent.tiny_model import make_llama

    return make_llama(tmp_path_factory.mktemp("models") / "tiny-llama-tp", "tiny-tp")


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (AGENT, str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def test_two_ranks_each_hold_half_the_model_and_generate_what_one_process_does(tmp_path: Path, tp_model: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script),
         str(tp_model), str(tmp_path)],
        env=_env(LLEM_TP_LAUNCHED="1"), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    # k_proj: 2 KV heads x head dim 64 = 128 output rows; split over two ranks, 64 each.
    assert [r["k_proj_local_rows"] for r in ranks] == [64, 64]
    assert ranks[0]["output_tokens"] == [8, 8] and ranks[0]["effective"]["tensor_parallel_size"] == 2
    tokenizer = AutoTokenizer.from_pretrained(tp_model)
    tokenizer.padding_side = "left"
    whole = AutoModelForCausalLM.from_pretrained(tp_model, dtype=torch.float32)
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.inference_mode():
        alone = whole.generate(**enc, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    assert ranks[0]["ids"] == alone.tolist()  # greedy: the sharded model's tokens are the whole model's


EXPERIMENT = """
model: {model}
max_input_tokens: 16
max_output_tokens: 8
dataset: {{source: builtin, n_prompts: 4}}
decoder: {{do_sample: false, min_new_tokens: 8}}
warmup: {{n_warmup: 1}}
baseline: {{enabled: false}}
pytorch: {{batch_size: 2, tp_plan: auto, tp_size: 2}}
"""


def test_the_agent_starts_its_ranks_under_torchrun_and_reports_a_followers_failure_as_the_runs(
    tmp_path: Path, tp_model: Path
):
    experiment = tmp_path / "tp.yaml"
    experiment.write_text(EXPERIMENT.format(model=tp_model))
    ok, failed = tmp_path / "ok", tmp_path / "failed"
    done = subprocess.run([sys.executable, "-m", "llem_agent", str(experiment), "--out", str(ok)], env=_env(),
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "tensor parallelism over 2 processes (torchrun)" in done.stdout
    result = json.loads((ok / "result.json").read_text())
    assert result["effective"]["tensor_parallel_size"] == 2
    assert result["output_tokens"] == 4 * 8 and result["input_tokens"] > 0  # 4 prompts, 8 tokens each
    assert not (ok / "error.json").exists()
    # A follower that fails once its shard is loaded: rank 0 loses its peer in the first
    # collective; the run's error is the follower's, which came first, in one line.
    bad = subprocess.run([sys.executable, "-m", "llem_agent", str(experiment), "--out", str(failed)],
                         env=_env(LLEM_FAULT_INJECTION="follower_error"), capture_output=True, text=True, timeout=300,
                         check=False)  # fmt: skip
    assert bad.returncode == 1, bad.stdout[-3000:]
    error = json.loads((failed / "error.json").read_text())
    assert error["message"] == "tensor-parallel rank 1: injected fault (LLEM_FAULT_INJECTION=follower_error)"
    assert error["phase"] == "measure" and not (failed / "result.json").exists()
