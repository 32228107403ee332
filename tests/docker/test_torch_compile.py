"""pytorch.torch_compile through a real container: the schema accepts it, so the image must run it
(it failed inside the container before: "No working C++ compiler found" for inductor)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import run_llem


def test_torch_compile_runs_in_the_pytorch_image(tmp_path: Path, tiny_model: Path):
    study = tmp_path / "compile.yaml"
    study.write_text(
        f"name: compile\nmodel: {tiny_model}\nmax_input_tokens: 16\nmax_output_tokens: 8\n"
        "dataset: {source: builtin, n_prompts: 4}\nwarmup: {n_warmup: 2}\n"
        "pytorch: {batch_size: 2, torch_compile: true}\nstudy_execution: {n_cycles: 1}\n"
    )
    done = run_llem("run", str(study), "--results-dir", str(tmp_path / "results"))
    (study_dir,) = (tmp_path / "results").iterdir()
    log = (study_dir / "runs" / "e001-c1" / "container.log").read_text()
    assert done.returncode == 0, log[-3000:]
    result = json.loads((study_dir / "runs" / "e001-c1" / "result.json").read_text())
    assert result["output_tokens"] > 0
    request = json.loads((study_dir / "runs" / "e001-c1" / "experiment.json").read_text())
    assert request["config"]["pytorch"]["torch_compile"] is True
