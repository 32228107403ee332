"""The PyTorch engine's token accounting, checked inside the real image on the tiny model."""

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
    assert found["effective"] == {"device": "cpu", "dtype": "float32", "batch_size": 1}
