"""vLLM for real: its agent runs a model through real containers, on vLLM's CPU build.

What the CPU build cannot exercise (needs a GPU): tensor / pipeline parallelism, CUDA graphs,
the attention backends, quantisation kernels (fp8, AWQ, GPTQ), speculative decoding with a
draft model, and energy. What runs here: offline LLM.generate with greedy and seeded
sampling, beam search, max_num_seqs batching, LoRA through LoRARequest, request metrics.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers import run_llem

ENGINE = "{max_num_seqs: 4, max_model_len: 256, gpu_memory_utilization: 0.2, enforce_eager: true}"


def results_of(study_dir: Path) -> dict[str, dict]:
    manifest = json.loads((study_dir / "manifest.json").read_text())
    return {
        r["run_id"]: json.loads((study_dir / "runs" / r["run_id"] / "result.json").read_text())
        for r in manifest["runs"]
        if r["status"] == "completed"
    }


def check_vllm_result(result: dict) -> None:
    """What a pytorch result promises, a vLLM result promises too."""
    assert result["engine"] == "vllm" and result["effective"]["device"] == "cpu"
    assert result["output_tokens"] == sum(r["output_tokens"] for r in result["requests"]) > 0  # from token ids
    assert result["input_tokens"] == sum(r["input_tokens"] for r in result["requests"]) > 0
    assert result["throughput"]["output_tokens_per_s"] > 0
    beam = bool(result["effective"].get("beam_width"))
    for request in result["requests"]:
        if beam:  # beam search times no token: none is made up, and the result says why
            assert request["ttft_s"] is None and request["token_times_s"] == [] and request["e2e_latency_s"] > 0
        else:
            assert request["ttft_s"] is not None and 0 < request["ttft_s"] <= request["e2e_latency_s"]
    if beam:
        assert "beam search" in result["latency"]["ttft_missing_reason"]
        assert result["latency"]["ttft_s"]["n"] == 0 and result["latency"]["inter_token_s"]["n"] == 0
    else:
        if any(r["output_tokens"] > 1 for r in result["requests"]):  # one token a request has no gap
            assert result["latency"]["inter_token_source"] == "request_means"
        assert result["latency"]["ttft_missing_reason"] is None  # vLLM's request metrics were there
    effective = result["effective"]
    assert effective["max_model_len"] == 256 and effective["batch_size"] == 4
    assert effective["gpu_memory_utilization"] == pytest.approx(0.2)
    assert result["environment"]["engine_version"] == "0.32.0"
    assert result["warmup"]["thermal_floor_note"] == "not applied: no GPU (CPU run)"


def test_vllm_study_through_real_containers(tmp_path: Path, tiny_llama: Path, tiny_llama_adapter: Path, vllm_image):
    vocab = json.loads((tiny_llama / "config.json").read_text())["vocab_size"]
    study = tmp_path / "vllm.yaml"
    study.write_text(
        f"""name: vllm-cpu
model: {tiny_llama}
engine: vllm
max_input_tokens: 32
max_output_tokens: 12
random_seed: 7
dataset: {{source: builtin, n_prompts: 8}}
decoder: {{do_sample: false}}
warmup: {{n_warmup: 4}}
vllm: {{engine: {ENGINE}}}
experiments:
  - {{}}
  - decoder: {{do_sample: true, temperature: 0.8, top_k: 20}}
    vllm: {{sampling: {{presence_penalty: 0.5}}}}
  - vllm: {{beam_search: {{beam_width: 2}}}}
  - lora: {{adapter_path: {tiny_llama_adapter}}}
  - passthrough_kwargs: {{stop_token_ids: {list(range(vocab))}}}
study_execution: {{n_cycles: 1}}
"""
    )
    done = run_llem("run", str(study), "--image", f"vllm={vllm_image}", "--results-dir", str(tmp_path / "r"),
                    timeout=900)  # fmt: skip
    (study_dir,) = (tmp_path / "r").iterdir()
    logs = "".join(p.read_text()[-1500:] for p in study_dir.glob("runs/*/container.log"))
    assert done.returncode == 0, done.stderr[-2000:] + logs
    results = results_of(study_dir)
    assert sorted(results) == ["e001-c1", "e002-c1", "e003-c1", "e004-c1", "e005-c1"]
    # passthrough_kwargs reached SamplingParams: every token of the vocabulary stops, so each request
    # ends at its first token (12 without it).
    stopped = results["e005-c1"]
    assert stopped["passthrough"] == {"stop_token_ids": "SamplingParams"}
    assert [r["output_tokens"] for r in stopped["requests"]] == [1] * 8
    assert all(r["output_tokens"] > 1 for r in results["e001-c1"]["requests"])
    for result in results.values():
        check_vllm_result(result)
    requests = {run_id: json.loads((study_dir / "runs" / run_id / "experiment.json").read_text())
                for run_id in results}  # fmt: skip
    assert requests["e002-c1"]["config"]["vllm"]["sampling"]["presence_penalty"] == 0.5
    assert requests["e004-c1"]["adapter_path"] == "/llem/adapter"
    assert "enable_lora" in (study_dir / "runs" / "e004-c1" / "container.log").read_text()


def test_the_engine_contract_check_passes_inside_the_vllm_image(vllm_image, docker_client):
    out = docker_client.containers.run(
        vllm_image, ["/checks/checks.py", "vllm"], entrypoint="python", network_mode="none",
        volumes={str(REPO / "tests" / "contract"): {"bind": "/checks", "mode": "ro"}}, remove=True,
        environment={"HOME": "/tmp"},
    ).decode()  # fmt: skip
    assert "OK" in out


def test_a_study_mixing_engines_runs_each_in_its_image_and_compares(tmp_path: Path, tiny_llama: Path, vllm_image):
    study = tmp_path / "mixed.yaml"
    study.write_text(
        f"""name: mixed
model: {tiny_llama}
max_input_tokens: 32
max_output_tokens: 12
dataset: {{source: builtin, n_prompts: 8}}
decoder: {{do_sample: false}}
warmup: {{n_warmup: 4}}
experiments:
  - engine: pytorch
    pytorch: {{batch_size: 4}}
  - engine: vllm
    vllm: {{engine: {ENGINE}}}
study_execution: {{n_cycles: 1}}
"""
    )
    done = run_llem("run", str(study), "--image", f"vllm={vllm_image}", "--results-dir", str(tmp_path / "r"),
                    timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (study_dir,) = (tmp_path / "r").iterdir()
    manifest = json.loads((study_dir / "manifest.json").read_text())
    assert {r["image"] for r in manifest["runs"]} == {"ghcr.io/llem-project/llem/pytorch:0.1.0", vllm_image}
    results = results_of(study_dir)
    assert {r["engine"] for r in results.values()} == {"pytorch", "vllm"}
    # The same prompts, truncated the same way: both engines saw the same input tokens.
    assert len({r["input_tokens"] for r in results.values()}) == 1
    table = run_llem("results", str(study_dir), "--sort", "output_tokens_per_s")
    assert table.returncode == 0 and "pytorch" in table.stdout and "vllm" in table.stdout
    report = run_llem("report", str(study_dir))
    assert report.returncode == 0
    page = (study_dir / "report.html").read_text()
    assert "pytorch" in page and "vllm" in page


def test_compose_runs_the_vllm_cpu_service(tmp_path: Path, tiny_llama: Path, vllm_image, docker_client):
    import os

    from tests.docker.test_compose import compose_commands

    results = tmp_path / "results"
    results.mkdir()
    env = {**os.environ, "LLEM_MODELS": str(tiny_llama.parent), "LLEM_RESULTS": str(results),
           "LLEM_IMAGE_VLLM_CPU": vllm_image}  # fmt: skip
    proc = subprocess.run(
        [*compose_commands()[0], "-f", str(REPO / "compose.yaml"), "run", "--rm", "vllm-agent-cpu"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    (run_dir,) = results.iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    assert result["engine"] == "vllm" and result["output_tokens"] > 0


def test_no_measured_prefill_is_served_from_vllms_prefix_cache(tmp_path: Path, tiny_llama: Path, vllm_image):
    """Prefix caching on (vLLM V1's default, set here explicitly): a cold window has no cached
    prompt token, whether warm-up drew held-out prompts or marked copies (a source with none to
    spare); a warm cache asked for on purpose is served and labelled. Before the fix warm-up ran
    the measured prompts themselves and every measured prefill hit the cache (128 of 162 tokens)."""
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "while",
        "seven",
        "bright",
        "stars",
        "watch",
    ]

    def prompt(i: int) -> str:  # 300 words: truncated to 192 tokens, more than one cache block
        return f"Prompt {i}: " + " ".join(words[(i + k) % len(words)] for k in range(300))

    (tmp_path / "long.jsonl").write_text("".join(json.dumps({"prompt": prompt(i)}) + "\n" for i in range(12)))
    (tmp_path / "exact.jsonl").write_text("".join(json.dumps({"prompt": prompt(i)}) + "\n" for i in range(8)))
    study = tmp_path / "prefix.yaml"
    study.write_text(
        f"""name: prefix-cache
model: {tiny_llama}
engine: vllm
max_input_tokens: 192
max_output_tokens: 4
dataset: {{source: long.jsonl, n_prompts: 8}}
decoder: {{do_sample: false}}
warmup: {{n_warmup: 8}}
vllm: {{engine: {{max_num_seqs: 4, max_model_len: 256, gpu_memory_utilization: 0.2, enforce_eager: true,
                 enable_prefix_caching: true}}}}
experiments:
  - {{}}
  - dataset: {{source: exact.jsonl, n_prompts: 8}}
  - warmup: {{n_warmup: 8, prefix_cache: warm}}
study_execution: {{n_cycles: 1, experiment_order: sequential}}
"""
    )
    done = run_llem("run", str(study), "--image", f"vllm={vllm_image}", "--results-dir", str(tmp_path / "r"),
                    timeout=900)  # fmt: skip
    (study_dir,) = (tmp_path / "r").iterdir()
    logs = "".join(p.read_text()[-1500:] for p in study_dir.glob("runs/*/container.log"))
    assert done.returncode == 0, done.stderr[-2000:] + logs
    results = results_of(study_dir)
    for run_id, source in (("e001-c1", "held_out"), ("e002-c1", "marked")):
        cold = results[run_id]
        assert cold["effective"]["enable_prefix_caching"] is True
        assert cold["warmup"]["prompt_source"] == source
        assert [r["cached_prompt_tokens"] for r in cold["requests"]] == [0] * 8, run_id
        assert cold["prefix_cache"]["mode"] == "cold" and cold["prefix_cache"]["reset_after_warmup"] is True
        assert cold["prefix_cache"]["cached_prompt_tokens"] == 0
        assert not [f for f in cold["energy"]["flags"] if f["code"].startswith("prefix_cache")]
    warm = results["e003-c1"]
    assert warm["warmup"]["prompt_source"] == "measured" and warm["prefix_cache"]["mode"] == "warm"
    hits = [r["cached_prompt_tokens"] for r in warm["requests"]]
    assert all(0 < n < r["input_tokens"] for n, r in zip(hits, warm["requests"], strict=True)), hits
    assert warm["prefix_cache"]["cached_prompt_tokens"] == sum(hits)
    assert [f["code"] for f in warm["energy"]["flags"]] == ["prefix_cache_warm"]
    table = run_llem("results", str(study_dir))
    assert table.returncode == 0 and "prefix_cache_warm" in table.stdout


def test_a_default_vllm_study_runs_with_most_of_the_hosts_memory_taken(tmp_path: Path, tiny_llama: Path, vllm_image):
    """vLLM's CPU backend reserves gpu_memory_utilization (0.92 by default) of the node's memory
    at start and refuses when less is free: a default study failed at load once the page cache of
    an image build filled the host. llem now sizes the KV cache from the study when it is silent."""
    total = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                 if line.startswith("MemTotal:"))  # fmt: skip
    hog_bytes = int(total * 0.6)  # more than 8% of the node in use: the default 0.92 cannot be reserved
    hog = subprocess.Popen(
        [sys.executable, "-c", "import mmap, sys\nn = int(sys.argv[1])\nm = mmap.mmap(-1, n)\n"
         "for i in range(0, n, 4096): m[i] = 1\nprint('held', flush=True)\nsys.stdin.read()", str(hog_bytes)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert hog.stdout is not None and hog.stdout.readline().strip() == "held"
        study = tmp_path / "busy.yaml"
        study.write_text(
            f"""name: vllm-busy-host
model: {tiny_llama}
engine: vllm
max_input_tokens: 32
max_output_tokens: 8
dataset: {{source: builtin, n_prompts: 4}}
decoder: {{do_sample: false}}
warmup: {{n_warmup: 4}}
vllm: {{engine: {{max_num_seqs: 4, max_model_len: 256, enforce_eager: true}}}}
study_execution: {{n_cycles: 1}}
"""
        )
        done = run_llem("run", str(study), "--image", f"vllm={vllm_image}", "--results-dir", str(tmp_path / "r"),
                        timeout=600)  # fmt: skip
    finally:
        hog.kill()
        hog.wait()
    (study_dir,) = (tmp_path / "r").iterdir()
    logs = "".join(p.read_text()[-1500:] for p in study_dir.glob("runs/*/container.log"))
    assert done.returncode == 0, done.stderr[-2000:] + logs
    (result,) = results_of(study_dir).values()
    # 2 x 2 layers x 1 KV head x 64 x 4 bytes a token, max(4 x 40, 256) tokens x 1.25: the 64 MiB floor.
    assert result["effective"]["kv_cache_memory_bytes"] == 64 << 20
    assert result["effective"]["kv_cache_sized_by"] == "llem"
