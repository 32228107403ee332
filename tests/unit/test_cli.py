"""Bad input through the real console script: one line, a distinct exit code, nothing written."""

from pathlib import Path

import pytest

from orchestrator.errors import EXIT_CONFIG, EXIT_ENVIRONMENT
from tests.helpers import run_llem


def assert_one_line_error(proc, code: int, fragment: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("llem: error: ")
    assert fragment in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("model: [oops\n", "YAML syntax error at line 2, column 1"),
        ("model: m\npytorch:\n  batchsize: 2\n", "unknown key 'batchsize' in 'pytorch' (did you mean 'batch_size'?)"),
        ("model: m\nengine: onnx\n", "engine: Input should be 'pytorch', 'vllm' or 'tensorrt'"),
    ],
)
def test_bad_study_files(tmp_path: Path, text: str, fragment: str):
    study = tmp_path / "s.yaml"
    study.write_text(text)
    proc = run_llem("run", str(study), "--results-dir", str(tmp_path / "results"))
    assert_one_line_error(proc, EXIT_CONFIG, fragment)
    assert not (tmp_path / "results").exists()


def test_missing_study_file(tmp_path: Path):
    proc = run_llem("run", str(tmp_path / "nope.yaml"))
    assert_one_line_error(proc, EXIT_CONFIG, "study file not found")


def test_missing_local_model_is_a_config_error(tmp_path: Path):
    study = tmp_path / "s.yaml"
    study.write_text("model: ./no-such-model\n")
    proc = run_llem("run", str(study), "--results-dir", str(tmp_path / "results"))
    assert_one_line_error(proc, EXIT_CONFIG, "model directory not found")


def test_unreachable_docker_is_an_environment_error_and_writes_nothing(tmp_path: Path):
    (tmp_path / "model").mkdir()
    study = tmp_path / "s.yaml"
    study.write_text("model: ./model\n")
    proc = run_llem(
        "run", str(study), "--results-dir", str(tmp_path / "results"), env={"DOCKER_HOST": "unix:///nonexistent.sock"}
    )
    assert_one_line_error(proc, EXIT_ENVIRONMENT, "Docker daemon not reachable")
    assert not (tmp_path / "results").exists()


def test_malformed_image_flag(tmp_path: Path):
    study = tmp_path / "s.yaml"
    study.write_text("model: hub/model\n")
    proc = run_llem("run", str(study), "--image", "nonsense")
    assert_one_line_error(proc, EXIT_CONFIG, "--image expects ENGINE=IMAGE")


def test_dry_run_prints_the_plan_and_skipped_points(tmp_path: Path):
    study = tmp_path / "s.yaml"
    study.write_text("model: hub/model\nsweep:\n  pytorch.batch_size: [0, 1, 2]\nstudy_execution: {n_cycles: 2}\n")
    proc = run_llem("run", str(study), "--dry-run", "--order", "interleave")
    assert proc.returncode == 0, proc.stderr
    assert "2 experiments × 2 cycles = 4 runs, order interleave" in proc.stdout
    assert "skipped" in proc.stdout
    assert "run order: e001-c1 e002-c1 e001-c2 e002-c2" in proc.stdout
