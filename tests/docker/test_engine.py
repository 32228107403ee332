"""The PyTorch engine's token accounting, checked inside the real image on the tiny model."""

import itertools
import json
import subprocess
from pathlib import Path

from tests.docker.conftest import IMAGE


def test_token_counts_come_from_token_ids_without_padding(tiny_model, docker_client):
    here = Path(__file__).parent
    proc = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-e", "HOME=/tmp", "--entrypoint", "python",
         "-v", f"{tiny_model}:/model:ro", "-v", f"{here}:/checks:ro", IMAGE, "/checks/engine_checks.py", "/model"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    # The short prompt is left-padded to the long one's width; padding is not counted.
    assert found["input_tokens"] == found["input_tokens_alone"]
    assert found["input_tokens"][0] < found["padded_width"] == found["input_tokens"][1] == 12
    assert all(1 <= n <= 8 for n in found["output_tokens"])
    assert [len(t) for t in found["token_times"]] == found["output_tokens"]
    assert found["lengths_eos"] == [3, 1, 4]
    assert (
        found["effective"] | {"device": "cpu", "dtype": "float32", "batch_size": 1, "num_beams": 1}
        == found["effective"]
    )


def test_004_fields_reach_generate(tiny_model, tiny_adapter, docker_client):
    here = Path(__file__).parent
    proc = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-e", "HOME=/tmp", "--entrypoint", "python",
         "-v", f"{tiny_model}:/model:ro", "-v", f"{tiny_adapter}:/adapter:ro", "-v", f"{here}:/checks:ro", IMAGE,
         "/checks/engine_features.py", "/model", "/adapter"],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    base = found["base"]
    assert found["beam"]["effective"]["num_beams"] == 3
    # Beams: no token is timed (transformers streams nothing with beams), none is made up.
    assert found["beam"]["times"] == [0, 0] and found["beam"]["untimed_reason"].startswith("beam search")
    assert found["beam"]["untimed_end_s"] > 0 and all(n > 0 for n in found["beam"]["output_tokens"])
    # passthrough_kwargs reached from_pretrained (a layer fewer) and generate (one token a request).
    passed = found["passthrough"]
    assert passed["passthrough"] == {"n_layer": "from_pretrained", "eos_token_id": "generate"}
    assert passed["parameters"] < base["parameters"] and passed["output_tokens"] == [1, 1]
    assert all(n > 1 for n in base["output_tokens"])
    # No n-gram of 2 repeats in what no_repeat_ngram_size=2 generated.
    for row in found["ngram"]["ids"]:
        pairs = list(itertools.pairwise(row))
        assert len(pairs) == len(set(pairs))
    # The fields took effect: a static KV cache, and the assisted-generation path of prompt lookup
    # (greedy decoding gives the same tokens either way, so equal tokens alone would prove nothing).
    assert found["static"]["cache"] == "StaticCache" and base["cache"] != "StaticCache"
    assert found["lookup"]["assisted"] and not found["single"]["assisted"]
    # ... and greedy decoding stays exact: the same tokens as the plain runs.
    assert found["static"]["ids"] == base["ids"]
    assert found["lookup"]["ids"] == found["single"]["ids"]
    # The adapter changes the outputs; merged and unmerged agree, and only unmerged stays a PeftModel.
    assert found["lora"]["ids"] != base["ids"]
    assert found["lora_merged"]["ids"] == found["lora"]["ids"]
    assert found["lora"]["model_class"].startswith("PeftModel")
    assert found["lora_merged"]["model_class"] == "GPT2LMHeadModel"


def test_pytorch_argument_contract_inside_the_image(docker_client):
    contract = Path(__file__).parent.parent / "contract"
    proc = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-e", "HOME=/tmp", "--entrypoint", "python",
         "-v", f"{contract}:/checks:ro", IMAGE, "/checks/checks.py", "pytorch"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("pytorch: OK")
