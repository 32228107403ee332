"""Local .jsonl prompt files: checked up front, relative to the study, mounted read-only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llem.cli import main
from llem.datasets import resolve_dataset
from llem.errors import ConfigError
from llem_agent.contract import ExperimentConfig, RunRequest
from tests.unit.test_studyloop import FakeRunner, make_loop


def cfg(source: str, n: int = 2) -> ExperimentConfig:
    return ExperimentConfig.model_validate({"model": "m", "dataset": {"source": source, "n_prompts": n}})


def prompts(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_a_relative_file_is_relative_to_the_study(tmp_path: Path):
    prompts(tmp_path / "p.jsonl", json.dumps({"prompt": "a"}), json.dumps("b"), "", json.dumps({"text": "c"}))
    assert resolve_dataset(cfg("p.jsonl", 3), tmp_path) == (tmp_path / "p.jsonl").resolve()
    assert resolve_dataset(cfg("builtin"), tmp_path) is None


@pytest.mark.parametrize(
    ("name", "lines", "n", "message"),
    [
        ("passwd", ["root:x:0:0:root:/root:/bin/bash"], 1, "neither a .jsonl file"),
        ("p.jsonl", ["not json"], 1, "p.jsonl:1: not JSON"),
        ("p.jsonl", [json.dumps({"title": "no prompt key"})], 1, "expected a string or an object"),
        ("p.jsonl", [json.dumps("only one")], 2, "has 1 prompts but dataset.n_prompts is 2"),
    ],
)
def test_what_the_agent_would_refuse_is_refused_before_any_container(tmp_path, name, lines, n, message):
    prompts(tmp_path / name, *lines)
    with pytest.raises(ConfigError, match=message):
        resolve_dataset(cfg(name, n), tmp_path)


def test_more_prompts_than_the_builtin_set_has_is_refused_before_any_container(tmp_path: Path):
    assert resolve_dataset(cfg("builtin", 200), tmp_path) is None  # the set has 200
    with pytest.raises(ConfigError, match=r"the builtin prompt set has 200 prompts but dataset\.n_prompts is 201"):
        resolve_dataset(cfg("builtin", 201), tmp_path)


def test_a_huge_single_line_is_refused_without_reading_it_whole(tmp_path: Path):
    path = tmp_path / "huge.jsonl"
    with path.open("w") as handle:  # 50 MB on one line: it took 200 s inside the container before
        handle.write(json.dumps({"prompt": "x" * 50_000_000}) + "\n")
    with pytest.raises(ConfigError, match=r"huge.jsonl:1: a line of more than 1 MiB"):
        resolve_dataset(cfg("huge.jsonl", 1), tmp_path)


def test_dry_run_finds_a_missing_file_in_one_line(tmp_path: Path, capsys):
    study = tmp_path / "s.yaml"
    study.write_text("model: gpt2\ndataset: {source: /etc/passwd, n_prompts: 1}\n")
    assert main(["run", str(study), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither a .jsonl file" in err[0]


def test_the_file_is_mounted_read_only_and_the_agent_told_where(tmp_path: Path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "data").mkdir()
    prompts(tmp_path / "data" / "mine.jsonl", *(json.dumps({"prompt": f"p{i}"}) for i in range(4)))
    study = tmp_path / "study.yaml"
    study.write_text("name: t\nmodel: ./model\ndataset: {source: data/mine.jsonl, n_prompts: 4}\n")
    runner = FakeRunner()
    loop = make_loop(tmp_path, study, runner)
    loop.preflight()
    study_dir = loop.prepare()
    loop.execute()
    spec = runner.specs[0]
    mount = spec.mount_at("/llem/dataset/mine.jsonl")
    assert mount is not None and mount.read_only and mount.source == (tmp_path / "data" / "mine.jsonl").resolve()
    request = RunRequest.model_validate_json((study_dir / "runs" / "e001-c1" / "experiment.json").read_text())
    assert request.dataset_path == "/llem/dataset/mine.jsonl"
