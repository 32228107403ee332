"""PyTorch tensor parallelism through a real container: `llem run` gives a run of
``tp_plan: auto, tp_size: 2`` one container in which the agent starts two ranks of itself under
torchrun (gloo on the CPU; NCCL and a GPU each on GPUs, not run here). A follower that fails
fails its run with its own one-line error, and the study's other run completes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import run_llem

STUDY = """
name: tp
model: {model}
max_input_tokens: 16
max_output_tokens: 8
dataset: {{source: builtin, n_prompts: 8}}
decoder: {{do_sample: false, min_new_tokens: 8}}
warmup: {{n_warmup: 1}}
baseline: {{enabled: false}}
pytorch: {{batch_size: 4, tp_plan: auto, tp_size: 2}}
study_execution: {{n_cycles: 1, experiment_order: sequential, config_gap_seconds: 0}}
experiments:
  - {{}}
  - {{pytorch: {{batch_size: 2}}}}
"""


def test_a_tensor_parallel_run_is_two_ranks_in_its_container_and_a_failed_follower_fails_only_its_run(
    tmp_path: Path, tiny_llama_tp: Path, docker_client
):
    study = tmp_path / "tp.yaml"
    study.write_text(STUDY.format(model=tiny_llama_tp))
    results = tmp_path / "results"
    args = ["--results-dir", str(results), "--lock-dir", str(tmp_path / "locks")]
    env = {"HF_HOME": str(tmp_path / "hf"), "LLEM_FAULT_INJECTION": "follower_error@e002-c1"}
    proc = run_llem("run", str(study), *args, env=env)
    assert proc.returncode == 1, proc.stderr + proc.stdout  # one run failed
    assert "1/2 runs completed" in proc.stdout
    (study_dir,) = results.iterdir()
    ran = study_dir / "runs" / "e001-c1"
    result = json.loads((ran / "result.json").read_text())
    assert result["effective"]["tensor_parallel_size"] == 2 and result["effective"]["batch_size"] == 4
    assert result["output_tokens"] == 8 * 8  # 8 prompts, exactly 8 tokens each
    assert "tensor parallelism over 2 processes (torchrun)" in (ran / "container.log").read_text()
    manifest = json.loads((study_dir / "manifest.json").read_text())
    entries = {r["run_id"]: r for r in manifest["runs"]}
    assert entries["e001-c1"]["status"] == "completed" and entries["e002-c1"]["status"] == "failed"
    failure = entries["e002-c1"]["failure"]
    assert "tensor-parallel rank 1: injected fault (LLEM_FAULT_INJECTION=follower_error)" in failure["message"]
    assert "\n" not in failure["message"]
    assert not list(study_dir.glob("runs/e002-c1/result.json"))
