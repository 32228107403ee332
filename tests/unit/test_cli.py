"""Bad input through the real console script: one line, a distinct exit code, nothing written."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from llem.errors import EXIT_CONFIG, EXIT_ENVIRONMENT
from tests.conftest import REPO
from tests.helpers import llem_executable, run_llem


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
    (tmp_path / "model" / "config.json").write_text("{}")
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
    assert "skipping 1 invalid grid point (nothing will run for them)" in proc.stdout
    # Named by what makes it that grid point (002: "tensorrt + dtype=float32"), not only its index.
    point = "grid point 1 (pytorch.batch_size=0): pytorch.batch_size: Input should be greater than or equal to 1"
    assert point in proc.stdout
    assert "run order: e001-c1 e002-c1 e001-c2 e002-c2" in proc.stdout


def test_dry_run_json_is_exactly_one_object_with_the_documented_keys(tmp_path: Path):
    study = tmp_path / "s.yaml"
    study.write_text("model: hub/model\nsweep:\n  pytorch.batch_size: [0, 1, 2]\nstudy_execution: {n_cycles: 2}\n")
    proc = run_llem("run", str(study), "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert proc.stdout.count("\n") == 1
    assert len(doc["study_design_hash"]) == 16
    assert [e["config"]["pytorch"]["batch_size"] for e in doc["experiments"]] == [1, 2]
    assert doc["skipped"][0]["config"]["pytorch"] == {"batch_size": 0}
    assert "greater than or equal to 1" in doc["skipped"][0]["reason"]
    assert len(doc["runs"]) == 4
    assert {(r["index"], r["cycle"]) for r in doc["runs"]} == {(0, 1), (1, 1), (0, 2), (1, 2)}
    assert {r["config_hash"] for r in doc["runs"]} == {e["config_hash"] for e in doc["experiments"]}


def test_json_without_dry_run_is_refused(tmp_path: Path):
    study = tmp_path / "s.yaml"
    study.write_text("model: hub/model\n")
    assert_one_line_error(run_llem("run", str(study), "--json"), EXIT_CONFIG, "--json goes with --dry-run")


def test_schema_command_writes_both_schemas(tmp_path: Path):
    proc = run_llem("schema", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    experiment = json.loads((tmp_path / "llem-experiment.schema.json").read_text())
    study = json.loads((tmp_path / "llem-study.schema.json").read_text())
    assert experiment["required"] == ["model"]
    assert "required" not in study
    assert {"sweep", "experiments", "study_execution", "base", "name", "runners", "model"} <= set(study["properties"])
    assert "n_cycles" in study["$defs"]["StudyExecution"]["properties"]
    result = json.loads((tmp_path / "llem-result.schema.json").read_text())
    assert {"energy", "latency", "throughput", "flops_estimate"} <= set(result["properties"])
    assert "flags" in result["$defs"]["EnergyReport"]["properties"]
    quickstart = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    assert set(quickstart) <= set(study["properties"])


def test_dry_run_estimates_vram_from_local_model_files(tmp_path: Path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps({"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2})
    )
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000, 100], "data_offsets": [0, 400000]}}).encode()
    (model / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    study = tmp_path / "s.yaml"
    study.write_text("model: ./model\ndtype: float16\nmax_input_tokens: 100\nmax_output_tokens: 100\n")
    doc = json.loads(run_llem("run", str(study), "--dry-run", "--json").stdout)
    weights = 100_000 * 2 / 1e9
    kv = 2 * 2 * 2 * 16 * 200 * 1 * 2 / 1e9
    assert doc["experiments"][0]["vram_estimate_gb"] == round(weights * 1.15 + kv, 3)


@pytest.mark.parametrize("name", ["../../etc", "a/b", ".hidden", ""])
def test_study_names_cannot_escape_the_results_directory(tmp_path: Path, name: str):
    study = tmp_path / "s.yaml"
    study.write_text("model: hub/model\n")
    proc = run_llem("run", str(study), "--name", name, "--results-dir", str(tmp_path / "results"))
    assert_one_line_error(proc, EXIT_CONFIG, "must be 1-100 characters")
    assert not (tmp_path / "results").exists()


def test_sample_interval_is_bounded(tmp_path: Path):
    study = tmp_path / "s.yaml"
    study.write_text("model: hub/model\n")
    proc = run_llem("run", str(study), "--sample-interval", "0")
    assert_one_line_error(proc, EXIT_CONFIG, "--sample-interval must be between 0.001 and 10 seconds")


# --- llem results / report / config ------------------------------------------------------


def _synthetic(tmp_path: Path) -> Path:
    from tests.synthetic import make_study_dir

    return make_study_dir(tmp_path / "results", n_cycles=2)


def test_results_table_sorted_and_filtered(tmp_path: Path):
    study = _synthetic(tmp_path)
    proc = run_llem("results", str(study), "--sort", "j_per_output_token")
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 8
    # Best (lowest energy per token) first: batch 8 before batch 1.
    assert "│ 8 " in rows[0] or "│ 7 " in rows[0]
    assert "failed e" in proc.stdout and "oom" in proc.stdout
    proc = run_llem("results", str(tmp_path / "results"), "--where", "batch_size=4", "--where", "dtype!=float16")
    rows = [line for line in proc.stdout.splitlines() if line.startswith("│")]
    assert proc.returncode == 0 and len(rows) == 1 and "bfloat16" in rows[0]


def test_results_json_is_the_summary(tmp_path: Path):
    study = _synthetic(tmp_path)
    proc = run_llem("results", str(study), "--json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["study_id"] == study.name
    assert (study / "summary.json").exists() and (study / "runs.parquet").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--where", "batchsize=4"], "unknown parameter 'batchsize' (did you mean"),
        (["--where", "nonsense"], "--where expects KEY=VALUE"),
        (["--metrics", "tokens_per_s"], "unknown metric 'tokens_per_s'"),
    ],
)
def test_results_bad_arguments(tmp_path: Path, args: list[str], fragment: str):
    study = _synthetic(tmp_path)
    assert_one_line_error(run_llem("results", str(study), *args), EXIT_CONFIG, fragment)


def test_results_of_nothing(tmp_path: Path):
    assert_one_line_error(run_llem("results", str(tmp_path / "none")), EXIT_CONFIG, "no such study")
    assert_one_line_error(run_llem("results", str(tmp_path)), EXIT_CONFIG, "no study directories")


def test_report_writes_one_offline_file(tmp_path: Path):
    study = _synthetic(tmp_path)
    out = tmp_path / "r.html"
    proc = run_llem("report", str(study), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert 'id="pareto"' in text and 'id="effect-0"' in text and 'id="traces"' in text
    assert external_references(text) == []  # nothing is fetched when it is opened


def external_references(text: str) -> list[str]:
    """src/href attributes of the document's own tags that point off the file."""
    from html.parser import HTMLParser

    found: list[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.extend(v for k, v in attrs if k in ("src", "href") and v and not v.startswith("#"))

    Parser().feed(text)
    return found


def test_config_shows_sources(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text("measurement:\n  datacenter_pue: 1.4\n")
    proc = run_llem("config", "--json", env={"LLEM_CONFIG": str(config), "LLEM_CARBON_INTENSITY": "200"})
    assert proc.returncode == 0, proc.stderr
    settings = json.loads(proc.stdout)["settings"]
    assert settings["measurement.datacenter_pue"] == {"value": 1.4, "source": f"user config {config}"}
    assert settings["measurement.carbon_intensity_gco2_kwh"]["source"] == "env LLEM_CARBON_INTENSITY"
    config.write_text("measurement: {datacenter_pue: high}\n")
    proc = run_llem("config", env={"LLEM_CONFIG": str(config)})
    assert_one_line_error(proc, EXIT_CONFIG, "measurement.datacenter_pue")


def test_doctor_fails_without_docker_and_says_how_to_fix(tmp_path: Path):
    proc = run_llem("doctor", "--json", env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert proc.returncode == EXIT_ENVIRONMENT, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    docker_check = next(c for c in report["checks"] if c["check"] == "Docker daemon")
    assert docker_check["status"] == "fail" and "make docker-engine" in docker_check["fix"]
    assert {c["check"] for c in report["checks"]} >= {"GPUs (NVML)", "results disk", "model cache disk"}
    proc = run_llem("doctor", env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert proc.returncode == EXIT_ENVIRONMENT and "1 check(s) failed" in proc.stdout


def test_doctor_reports_a_broken_user_config(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text("measurement: 3\n")
    proc = run_llem("doctor", "--json", env={"LLEM_CONFIG": str(config)})
    assert proc.returncode == EXIT_ENVIRONMENT
    assert json.loads(proc.stdout)["checks"][0]["status"] == "fail"


def _big_grid(tmp_path: Path) -> Path:
    """A 3,000-experiment study: its dry-run JSON is megabytes, far beyond a pipe's buffer."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    axis = list(range(1, 11))
    study = {
        "name": "big",
        "model": "./model",
        "sweep": {
            "random_seed": axis,
            "dataset.n_prompts": axis,
            "pytorch.batch_size": axis,
            "warmup.n_warmup": [1, 2, 3],
        },
    }
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_everything_printed_reaches_a_pipe_before_llem_exits(study_file: Path):
    """The console script skips interpreter teardown (os._exit): what is still buffered for
    stdout (a small document is all buffer) must be flushed first, or a script reading llem's
    output gets nothing."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a pipe is block-buffered
    proc = subprocess.run(
        [llem_executable(), "run", str(study_file), "--dry-run", "--json"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["experiments"]) == 2


def test_a_reader_that_stops_early_is_not_an_internal_error(tmp_path: Path):
    """`llem run big.yaml --dry-run --json | head -c 10`: the pipe closes under llem."""
    proc = subprocess.Popen(
        [llem_executable(), "run", str(_big_grid(tmp_path)), "--dry-run", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(10) == b'{"study_na'
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1, err
    assert err == "", err


def test_a_long_line_is_never_wrapped_when_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture[str]):
    """A long path or error on a pipe or in a CI log stays on one line (copy, grep)."""
    from llem.display import console as _console

    path = "/results/" + "d" * 90 + "/" + "e" * 90 + "/runs/e001-c1/container.log"
    _console(stderr=True).print(f"  ✗ e001-c1  load: engine failed, see {path}")
    (line,) = capsys.readouterr().err.splitlines()  # was: wrapped at column 150 onto a second line
    assert line.endswith(path)


def test_no_flag_is_taken_for_another_by_its_prefix():
    from llem.cli import build_parser

    parser = build_parser()
    # `--name` was silently taken as `--namespace` by `llem k8s` (argparse abbreviations).
    with pytest.raises(SystemExit):
        parser.parse_args(["k8s", "s.yaml", "--out", "o", "--pvc", "p", "--name", "x"])
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "s.yaml", "--res", "results"])  # a prefix of --results-dir / --resume
    assert parser.parse_args(["run", "s.yaml", "--results-dir", "r"]).results_dir == "r"


def test_counts_are_said_in_the_singular_for_one():
    from llem.words import plural

    assert (plural(1, "run"), plural(2, "run"), plural(1000, "run")) == ("1 run", "2 runs", "1,000 runs")


def test_one_executor_flag_names_who_runs_the_study(tmp_path: Path):
    """issue 21: --executor process|parallel|slurm|k8s; contradictions are one line each."""
    study = tmp_path / "s.yaml"
    study.write_text("model: hub/model\n")
    proc = run_llem("run", str(study), "--executor", "k8s")
    assert_one_line_error(proc, EXIT_CONFIG, "--executor k8s writes the Jobs: it needs --out DIR and --pvc NAME")
    proc = run_llem("run", str(study), "--executor", "process", "--parallel", "2")
    assert_one_line_error(proc, EXIT_CONFIG, "--parallel 2 is --executor parallel")
    proc = run_llem("run", str(study), "--executor", "slurm", "--parallel", "2")
    assert_one_line_error(proc, EXIT_CONFIG, "--parallel runs workers on this host")
    proc = run_llem("run", str(study), "--executor", "cron")
    assert proc.returncode == 2 and "invalid choice: 'cron'" in proc.stderr
