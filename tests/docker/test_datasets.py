"""A local .jsonl prompt file through real containers (it was never mounted before)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import run_llem


def test_a_relative_jsonl_dataset_is_mounted_and_measured(tmp_path: Path, tiny_model: Path):
    (tmp_path / "data").mkdir()
    lines = [json.dumps({"prompt": "the same short prompt, every time"})] * 5 + [json.dumps("a bare string prompt")]
    (tmp_path / "data" / "mine.jsonl").write_text("\n".join(lines) + "\n")
    study = tmp_path / "study.yaml"
    study.write_text(
        f"name: jsonl\nmodel: {tiny_model}\nmax_output_tokens: 4\nwarmup: {{n_warmup: 1}}\n"
        "dataset: {source: data/mine.jsonl, n_prompts: 6}\nstudy_execution: {n_cycles: 1}\n"
    )
    done = run_llem("run", str(study), "--results-dir", str(tmp_path / "results"))
    assert done.returncode == 0, done.stderr[-2000:]
    (study_dir,) = (tmp_path / "results").iterdir()
    result = json.loads((study_dir / "runs" / "e001-c1" / "result.json").read_text())
    inputs = [r["input_tokens"] for r in result["requests"]]
    assert len(inputs) == 6
    assert len(set(inputs[:5])) == 1 and inputs[5] != inputs[0]  # the file's prompts, in its order
    request = json.loads((study_dir / "runs" / "e001-c1" / "experiment.json").read_text())
    assert request["dataset_path"] == "/llem/dataset/mine.jsonl"
