"""Hostile study files, second set (issue 23, section 6): each class crashed (exit 70), hung, or
was planned as something it is not before the fix; each is now one line and exit 2.

1. A study path that is a device or an endless stream (/dev/zero, a FIFO, /proc) was read whole.
2. Non-finite and absurd numbers (10^100 tokens, .inf seconds) were found out inside a container.
3. Booleans and quoted strings were numbers (``batch_size: true`` ran as batch size 1).
4. The same classes elsewhere: NaN in free-form mappings, keys that are not strings, study and
   user-config numbers.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import threading
import tracemalloc
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from llem import yamlsafe
from llem.errors import ConfigError
from llem.models import model_facts
from llem.study import StudyExecution, load_study, study_from_data
from llem.userconfig import UserConfigFile, load_user_config
from llem_agent.contract import ExperimentConfig, RunRequest, config_hash
from llem_agent.contract.config import MAX_CONFIG_FILE_BYTES
from llem_agent.main import load_request
from tests.helpers import llem_executable

MEMORY_LIMIT = 2 << 30  # a regression fails with MemoryError, not by eating the machine


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def llem(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [llem_executable(), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,  # a FIFO waited on is a hang: a failure here, not a stuck suite
        preexec_fn=_limit_memory,
        check=False,
    )


def assert_refused(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 2, one line on stderr, no traceback; returns the line."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llem: error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def study(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def raised_within(fifo: Path, call: Any, seconds: float = 30) -> BaseException | None:
    """What ``call`` raised, run in a thread: a read that waits for a writer on ``fifo`` fails
    the test after ``seconds`` (and is let go) instead of hanging the suite."""
    outcome: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test's thread
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the reader sees end of file
        thread.join(timeout=seconds)
        pytest.fail(f"waited for a writer on the FIFO {fifo}")
    return outcome[0] if outcome else None


# ---- 1. Devices, streams and huge files are refused before they are read ----------------------


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_a_device_as_the_study_is_refused_without_reading_it(device):
    assert_refused(llem("run", device, "--dry-run"), "is a character device, not a regular file", "16 MiB")


def test_a_fifo_with_no_writer_is_refused_at_once_not_waited_on(tmp_path):
    fifo = tmp_path / "study.yaml"
    os.mkfifo(fifo)
    assert_refused(llem("run", str(fifo), "--dry-run"), "is a FIFO, not a regular file")


def test_a_fifo_that_never_ends_is_refused_not_read(tmp_path):
    fifo = tmp_path / "study.yaml"
    os.mkfifo(fifo)
    stop = threading.Event()

    def endless() -> None:  # a writer that would go on for ever (until the reader leaves)
        try:
            with fifo.open("w") as out:
                while not stop.is_set():
                    out.write("model: gpt2\n" * 1000)
        except OSError:  # BrokenPipeError once llem has gone
            pass

    writer = threading.Thread(target=endless, daemon=True)
    writer.start()
    try:
        assert_refused(llem("run", str(fifo), "--dry-run"), "is a FIFO, not a regular file")
    finally:
        stop.set()
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # frees a writer still waiting to open it
        writer.join(timeout=10)


def test_a_huge_sparse_file_is_refused_reading_at_most_the_limit_plus_one(tmp_path):
    path = tmp_path / "study.yaml"
    with path.open("wb") as handle:
        handle.truncate(64 << 30)  # 64 GiB, sparse: read whole it is a MemoryError
    assert_refused(llem("run", str(path), "--dry-run"), "is larger than 16 MiB")
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match="larger than 16 MiB"):
            yamlsafe.read_text(path, "study file")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * MAX_CONFIG_FILE_BYTES


def test_a_proc_file_that_says_it_is_empty_is_read_only_up_to_the_limit():
    # /proc/self/pagemap is a regular file of size 0 that streams 8 bytes per page of address space.
    assert_refused(llem("run", "/proc/self/pagemap", "--dry-run"), "is larger than 16 MiB")


def test_a_file_of_exactly_the_limit_is_read(tmp_path):
    path = tmp_path / "study.yaml"
    text = "model: gpt2\n"
    path.write_text(text + "#" * (MAX_CONFIG_FILE_BYTES - len(text) - 1) + "\n")
    assert yamlsafe.read_text(path, "study file") == path.read_text()
    assert load_study(path).experiments[0].config.model == "gpt2"


def test_a_directory_and_a_missing_file_keep_their_messages(tmp_path):
    assert_refused(llem("run", str(tmp_path), "--dry-run"), "study file is a directory")
    assert_refused(llem("run", str(tmp_path / "nope.yaml"), "--dry-run"), "study file not found")


def test_a_base_file_that_is_a_device_is_refused(tmp_path):
    path = study(tmp_path, "base: /dev/zero\nmodel: gpt2\n")
    assert_refused(llem("run", str(path), "--dry-run"), "/dev/zero is a character device")


def test_the_user_config_is_bounded_as_a_study_is(tmp_path):
    assert_refused(llem("config", env={"LLEM_CONFIG": "/dev/zero"}), "user config /dev/zero is a character device")
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    assert_refused(llem("config", env={"LLEM_CONFIG": str(fifo)}), "is a FIFO")


def test_a_study_directory_copy_is_read_through_the_same_bound(tmp_path):
    # llem worker / --resume-dir read the study file (or its copy) with load_study.
    fifo = tmp_path / "study.yaml"
    os.mkfifo(fifo)
    error = raised_within(fifo, lambda: load_study(fifo))
    assert isinstance(error, ConfigError) and "is a FIFO" in str(error)


def agent_error(path: Path, out: Path) -> str:
    """``llem-agent PATH`` in its own memory-limited process: the error.json it writes, one line."""
    proc = subprocess.run(
        [sys.executable, "-m", "llem_agent.main", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limit_memory,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    error = json.loads((out / "error.json").read_text())
    return f"{error['type']}: {error['message']}"


def test_the_agent_reads_an_experiment_file_within_the_same_bound(tmp_path):
    assert agent_error(Path("/dev/zero"), tmp_path) == "ValueError: /dev/zero is not a regular file; " + (
        "llem-agent reads an experiment from a regular file"
    )
    fifo = tmp_path / "experiment.json"
    os.mkfifo(fifo)
    assert "is not a regular file" in agent_error(fifo, tmp_path)  # at once: no writer is waited for
    big = tmp_path / "big.json"
    with big.open("wb") as handle:
        handle.truncate(64 << 30)
    assert "larger than 16 MiB" in agent_error(big, tmp_path)
    with big.open("wb") as handle:
        handle.truncate(MAX_CONFIG_FILE_BYTES + 1)
    with pytest.raises(ValueError, match="larger than 16 MiB"):
        load_request(big)


def test_the_agent_refuses_yaml_aliases_so_an_alias_bomb_is_never_built(tmp_path):
    bomb = "model: gpt2\npassthrough_kwargs:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"  {chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(9)
    )
    path = tmp_path / "experiment.yaml"
    path.write_text(bomb)
    assert "YAML aliases (*name) are not read here" in agent_error(path, tmp_path)


def test_the_agent_reads_yaml_numbers_as_the_host_does(tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text("model: gpt2\ndecoder: {top_p: 9e-1}\nbaseline: {cache_ttl_seconds: 1e4}\n")
    config = load_request(path).config
    assert (config.decoder.top_p, config.baseline.cache_ttl_seconds) == (0.9, 10000.0)


def test_a_damaged_model_on_the_host_is_no_estimate_not_a_crash(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4}')
    path = study(tmp_path, "model: ./m\n")
    for header in (
        struct.pack("<Q", 2**62) + b"{}",
        b"abc",
        struct.pack("<Q", 5) + b"{nope",
        struct.pack("<Q", 2) + b"[]",
    ):
        (model / "model.safetensors").write_bytes(header)
        model_facts.cache_clear()
        proc = llem("run", str(path), "--dry-run")
        assert proc.returncode == 0, proc.stderr
        facts = model_facts(model.resolve())  # the damaged header is skipped: config.json's estimate
        assert facts is not None and facts.params_from == "config.json"
    (model / "model.safetensors").unlink()
    (model / "config.json").unlink()
    big = tmp_path / "huge.json"
    with big.open("wb") as handle:
        handle.truncate(64 << 30)
    (model / "config.json").symlink_to(big)
    proc = llem("run", str(path), "--dry-run", "--json")  # in its own process: read whole it is 64 GiB
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["experiments"][0]["vram_estimate_gb"] is None


# ---- The schema, walked: every numeric field of every model a user writes ---------------------

USER_MODELS: list[type[BaseModel]] = [ExperimentConfig, StudyExecution, UserConfigFile]


def _submodels(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _submodels(arg)]


def _number_types(annotation: Any) -> set[type]:
    if typing.get_origin(annotation) is typing.Annotated:
        return _number_types(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return {t for arg in typing.get_args(annotation) for t in _number_types(arg)}
    return {annotation} & {int, float}


def _limits(info: FieldInfo) -> set[str]:
    metadata = list(info.metadata)
    for arg in typing.get_args(info.annotation):  # Annotated[int, Field(ge=1, le=...)] | Literal["auto"]
        if typing.get_origin(arg) is typing.Annotated:
            metadata += [m for extra in typing.get_args(arg)[1:] for m in getattr(extra, "metadata", [extra])]
    return {name for m in metadata for name in ("ge", "gt", "le", "lt") if getattr(m, name, None) is not None}


def models(model: type[BaseModel]) -> Iterator[type[BaseModel]]:
    yield model
    for info in model.model_fields.values():
        for sub in _submodels(info.annotation):
            yield from models(sub)


def numeric_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], FieldInfo]]:
    for name, info in model.model_fields.items():
        for sub in _submodels(info.annotation):
            yield from numeric_fields(sub, (*prefix, name))
        if _number_types(info.annotation):
            yield (*prefix, name), info


EXPERIMENT_NUMBERS = list(numeric_fields(ExperimentConfig))
STUDY_NUMBERS = list(numeric_fields(StudyExecution))
USER_NUMBERS = list(numeric_fields(UserConfigFile))


def test_the_walk_finds_the_fields_it_should():
    paths = {".".join(p) for p, _ in EXPERIMENT_NUMBERS}
    assert {"max_output_tokens", "pytorch.batch_size", "warmup.thermal_floor_seconds", "random_seed"} <= paths
    assert {"vllm.engine.speculative_config.num_speculative_tokens", "tensorrt.kv_cache.max_tokens"} <= paths
    assert len(EXPERIMENT_NUMBERS) > 60 and len(STUDY_NUMBERS) == 8 and len(USER_NUMBERS) == 4  # PUE, CO2, 2 pauses


@pytest.mark.parametrize("model", [m for root in USER_MODELS for m in models(root)], ids=lambda m: m.__name__)
def test_every_model_a_user_writes_is_strict_and_finite(model):
    assert model.model_config.get("strict") is True
    assert model.model_config.get("allow_inf_nan") is False


@pytest.mark.parametrize(
    ("path", "info"),
    EXPERIMENT_NUMBERS + STUDY_NUMBERS + USER_NUMBERS,
    ids=lambda x: ".".join(x) if isinstance(x, tuple) else "",
)
def test_every_number_has_a_documented_finite_range(path, info):
    limits = _limits(info)
    assert limits & {"ge", "gt"} and limits & {"le", "lt"}, f"{'.'.join(path)} has no range: {limits}"


def raw_with(path: tuple[str, ...], value: object) -> dict[str, Any]:
    """The smallest experiment that sets ``path`` (in its engine's section) to ``value``."""
    raw: dict[str, Any] = {"model": "m"}
    if path[0] in ("pytorch", "vllm", "tensorrt"):
        raw["engine"] = path[0]
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    return raw


# ---- 2. Non-finite and absurd numbers ---------------------------------------------------------


def test_ten_to_the_hundred_output_tokens_is_refused_on_the_host(tmp_path):
    line = assert_refused(
        llem("run", str(study(tmp_path, f"model: gpt2\nmax_output_tokens: {10**100}\n")), "--dry-run")
    )
    assert "max_output_tokens" in line and "allowed: 1 to 1,048,576" in line
    line = assert_refused(llem("run", str(study(tmp_path, "model: gpt2\nmax_output_tokens: 1e100\n")), "--dry-run"))
    assert "max_output_tokens: expected an integer (1 to 1,048,576), got 1e+100: a float is not an integer" in line


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_an_infinite_or_nan_duration_is_refused_naming_the_field_and_range(tmp_path, value):
    path = study(tmp_path, f"model: gpt2\nwarmup: {{thermal_floor_seconds: {value}}}\n")
    line = assert_refused(llem("run", str(path), "--dry-run"))
    assert "warmup.thermal_floor_seconds: expected a finite number (30 to 600)" in line
    assert "NaN and infinity are not allowed" in line


@pytest.mark.parametrize(
    ("path", "info"), EXPERIMENT_NUMBERS, ids=lambda x: ".".join(x) if isinstance(x, tuple) else ""
)
def test_every_experiment_number_refuses_nan_infinity_and_ten_to_the_hundred(path, info):
    for value in (float("nan"), float("inf"), float("-inf"), 10**100, -(10**100)):
        with pytest.raises(ValidationError):
            ExperimentConfig.model_validate(raw_with(path, value))


@pytest.mark.parametrize(("path", "info"), STUDY_NUMBERS, ids=lambda x: ".".join(x) if isinstance(x, tuple) else "")
def test_every_study_execution_number_refuses_nan_infinity_and_ten_to_the_hundred(tmp_path, path, info):
    for value in (float("nan"), float("inf"), 10**100):
        with pytest.raises(ConfigError, match=f"study_execution: {path[-1]}"):
            study_from_data({"model": "m", "study_execution": {path[-1]: value}}, tmp_path / "s.yaml")


def test_a_billion_cycles_is_refused_by_its_range(tmp_path):
    path = study(tmp_path, "model: gpt2\nstudy_execution: {n_cycles: 1000000000}\n")
    assert "n_cycles" in assert_refused(llem("run", str(path), "--dry-run"), "allowed: 1 to 1,000,000")


def test_out_of_range_in_a_sweep_skips_that_point_with_its_range(tmp_path):
    loaded = load_study(study(tmp_path, "model: m\nsweep:\n  max_output_tokens: [16, 2000000]\n"))
    assert [e.config.max_output_tokens for e in loaded.experiments] == [16]
    assert "allowed: 1 to 1,048,576" in loaded.skipped[0].reason


def test_the_documented_maxima_are_accepted():
    config = ExperimentConfig.model_validate(
        {
            "model": "m",
            "max_output_tokens": 1 << 20,
            "max_input_tokens": 1 << 20,
            "random_seed": 2**32 - 1,
            "dataset": {"n_prompts": 1_000_000},
            "pytorch": {"batch_size": 65536},
        }
    )
    assert config.max_output_tokens == 1 << 20 and config.pytorch is not None and config.pytorch.batch_size == 65536
    vllm = ExperimentConfig.model_validate(
        {"model": "m", "engine": "vllm", "vllm": {"engine": {"gpu_memory_utilization": 1}}}
    )
    assert vllm.vllm is not None and vllm.vllm.engine is not None and vllm.vllm.engine.gpu_memory_utilization == 1.0


# ---- 3. A boolean is never a number; a quoted string is not one either ------------------------


def test_batch_size_true_is_refused_not_planned_as_one(tmp_path):
    line = assert_refused(llem("run", str(study(tmp_path, "model: gpt2\npytorch: {batch_size: true}\n")), "--dry-run"))
    assert "pytorch.batch_size: expected an integer (1 to 65,536), got true: true/false is never a number" in line


def test_a_sweep_with_a_boolean_among_numbers_is_refused_whole(tmp_path):
    path = study(tmp_path, "model: gpt2\nsweep:\n  pytorch.batch_size: [1, true]\n")
    assert_refused(llem("run", str(path), "--dry-run"), "pytorch.batch_size", "true/false is never a number")
    group = study(
        tmp_path, "model: gpt2\nsweep:\n  g:\n    - {pytorch.batch_size: 2}\n    - {pytorch.batch_size: [4, false]}\n"
    )
    assert_refused(llem("run", str(group), "--dry-run"), "pytorch.batch_size", "got false")


def test_a_quoted_number_is_refused_with_the_fix(tmp_path):
    line = assert_refused(llem("run", str(study(tmp_path, 'model: gpt2\nmax_output_tokens: "64"\n')), "--dry-run"))
    assert "got '64': a quoted string is not a number; write it without quotes" in line


@pytest.mark.parametrize(
    ("path", "info"), EXPERIMENT_NUMBERS, ids=lambda x: ".".join(x) if isinstance(x, tuple) else ""
)
def test_every_experiment_number_refuses_booleans_and_strings_as_a_mistake_in_the_file(tmp_path, path, info):
    for value in (True, False, "4", "1.5"):
        with pytest.raises(ConfigError, match=path[-1]):  # the whole study: not one skipped grid point
            study_from_data(raw_with(path, value), tmp_path / "s.yaml")


@pytest.mark.parametrize(("path", "info"), STUDY_NUMBERS, ids=lambda x: ".".join(x) if isinstance(x, tuple) else "")
def test_every_study_execution_number_refuses_booleans_and_strings(tmp_path, path, info):
    for value in (True, "4"):
        with pytest.raises(ConfigError, match=f"study_execution: {path[-1]}"):
            study_from_data({"model": "m", "study_execution": {path[-1]: value}}, tmp_path / "s.yaml")


@pytest.mark.parametrize("value", ["true", '"1.5"', ".nan", "20"])
def test_user_config_numbers_are_strict_and_finite(tmp_path, monkeypatch, value):
    config = tmp_path / "config.yaml"
    config.write_text(f"measurement:\n  datacenter_pue: {value}\n")
    monkeypatch.setenv("LLEM_CONFIG", str(config))
    with pytest.raises(ConfigError, match=r"measurement\.datacenter_pue"):
        load_user_config()


def test_a_number_is_not_a_boolean_either(tmp_path):
    assert_refused(
        llem("run", str(study(tmp_path, "model: gpt2\ndecoder: {do_sample: 1}\n")), "--dry-run"), "do_sample"
    )


def test_what_yaml_gives_as_numbers_still_loads(tmp_path):
    text = (
        "model: m\ndecoder: {temperature: 1, top_p: 9e-1, repetition_penalty: 1.5e+0}\n"
        "baseline: {cache_ttl_seconds: 1e4}\n"
    )
    config = load_study(study(tmp_path, text)).experiments[0].config
    assert (config.decoder.temperature, config.decoder.top_p, config.baseline.cache_ttl_seconds) == (1.0, 0.9, 10000.0)
    assert isinstance(config.decoder.temperature, float)


def test_the_host_written_request_round_trips_through_the_agent(tmp_path):
    text = (
        "model: gpt2\nengine: [pytorch, vllm]\ndecoder: {temperature: 1, top_k: 40}\nrandom_seed: 7\n"
        "passthrough_kwargs: {foo: [1, 2.5, {bar: true}]}\n"
        "sweep:\n  pytorch.batch_size: [1, 4]\n  vllm.engine.gpu_memory_utilization: [0.5, 1]\n"
        "  max_output_tokens: [16, 64]\n"
    )
    loaded = load_study(study(tmp_path, text))
    assert len(loaded.experiments) == 8
    for exp in loaded.experiments:
        request = RunRequest(run_id="r", study_name="s", cycle=1, config_hash=exp.config_hash, config=exp.config)
        path = tmp_path / "experiment.json"
        path.write_text(request.model_dump_json(indent=2))
        again = load_request(path)
        assert again.config == exp.config and config_hash(again.config) == exp.config_hash


# ---- 4. The same classes elsewhere ------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "passthrough_kwargs: {x: [1, .nan]}",
        "passthrough_kwargs: {x: {y: .inf}}",
        "passthrough_kwargs: {x: {1: a}}",
        "engine: vllm\nvllm: {engine: {compilation_config: {level: .nan}}}",
        "passthrough_kwargs: {when: 2024-01-01}",
    ],
)
def test_free_form_engine_arguments_are_json_finite_numbers_and_string_keys(tmp_path, text):
    line = assert_refused(llem("run", str(study(tmp_path, f"model: gpt2\n{text}\n")), "--dry-run"))
    assert any(why in line for why in ("not a finite number", "must be strings, got 1", "JSON cannot carry"))


def test_a_key_that_is_not_a_string_is_a_mistake_in_the_file(tmp_path):
    assert_refused(llem("run", str(study(tmp_path, "model: gpt2\n1: 2\n")), "--dry-run"), "Keys should be strings")
    path = study(tmp_path, "model: m\nsweep:\n  random_seed: [1, 2]\n  2: [3]\n")
    assert_refused(llem("run", str(path), "--dry-run"), "keys must be non-empty strings")


def test_a_sweep_axis_of_a_million_values_by_alias_is_refused_as_a_bomb(tmp_path):
    values = "a: &a [" + ", ".join(["1"] * 1000) + "]\n"
    text = "model: gpt2\nlists:\n  " + values + "sweep:\n  random_seed: [" + ", ".join(["*a"] * 1000) + "]\n"
    assert_refused(llem("run", str(study(tmp_path, text)), "--dry-run"), "alias bomb")


def test_max_parallel_runs_true_is_not_one(tmp_path):
    path = study(tmp_path, "model: gpt2\nstudy_execution: {max_parallel_runs: true}\n")
    assert_refused(llem("run", str(path), "--dry-run"), "max_parallel_runs: expected an integer", "got true")


def test_json_schema_documents_the_ranges():
    schema = ExperimentConfig.model_json_schema()
    assert schema["properties"]["max_output_tokens"]["anyOf"][0]["maximum"] == 1 << 20
    assert json.dumps(schema).count('"maximum"') >= len(EXPERIMENT_NUMBERS) - 2  # Literal-free numbers


def test_a_prompt_file_is_read_no_further_than_its_bound_whatever_its_size_says(tmp_path, monkeypatch):
    from llem import datasets

    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "hello"}\n' * 100)
    monkeypatch.setattr(datasets, "MAX_DATASET_BYTES", 500)
    with pytest.raises(ConfigError, match="more than 1 GiB of prompts"):
        datasets._count_prompts.__wrapped__(path, 0, 0)  # a size of 0, as a /proc file says
