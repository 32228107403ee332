"""Runner choice (docker | local) per engine, and the runner handing each runner its own paths."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from llem.errors import ConfigError
from llem.manifest import ManifestStore
from llem.runners import parse_runner, resolve_runners
from llem_agent.contract import RunRequest
from tests.unit.test_studyloop import FakeRunner, make_loop


def test_precedence_env_then_user_config_then_cli_then_study():
    engines = {"pytorch", "vllm", "tensorrt"}
    got = resolve_runners(
        engines,
        study={"pytorch": "local", "vllm": "local", "tensorrt": "local"},
        cli="docker",
        user={"vllm": "local"},
        environ={"LLEM_RUNNER_TENSORRT": "local"},
    )
    assert {e: (c.kind, c.source) for e, c in got.items()} == {
        "pytorch": ("docker", "--runner"),
        "vllm": ("local", "user config"),
        "tensorrt": ("local", "env LLEM_RUNNER_TENSORRT"),
    }
    plain = resolve_runners({"pytorch"}, study={"pytorch": "local"}, cli=None, user={}, environ={})
    assert (plain["pytorch"].kind, plain["pytorch"].source) == ("local", "study runners:")
    assert resolve_runners({"vllm"}, study={}, cli=None, user={}, environ={})["vllm"].kind == "docker"


def test_one_grammar_for_a_runner_everywhere():
    assert parse_runner("docker:my/img:1", "x") == ("docker", "my/img:1")
    assert parse_runner("local", "x") == ("local", None)
    with pytest.raises(ConfigError, match="LLEM_RUNNER_VLLM: expected docker, docker:<image> or local"):
        resolve_runners({"vllm"}, study={}, cli=None, user={}, environ={"LLEM_RUNNER_VLLM": "podman"})


class FakeLocal(FakeRunner):
    kind = "local"

    def agent_path(self, mount):
        return str(mount.source)


def test_a_local_runner_gets_host_paths_and_the_manifest_says_local(tmp_path: Path, study_file: Path):
    runner = FakeLocal()
    loop = make_loop(tmp_path, study_file, runner)
    loop.runner = {"pytorch": runner}
    loop.preflight()
    study_dir = loop.prepare()
    loop.execute()
    request = RunRequest.model_validate_json((study_dir / "runs" / "e001-c1" / "experiment.json").read_text())
    assert request.model_path == str((tmp_path / "model").resolve())  # the host's directory, not /llem/model
    assert request.runner == "local" and request.gpu_uuids == []  # a CPU run: no GPU to measure
    manifest = ManifestStore.load(study_dir)
    assert {(r.runner, r.image) for r in manifest.runs} == {("local", "local")}
    host = (study_dir / "host.json").read_text()
    assert '"runners": {\n      "pytorch": "local"' in host


def test_the_docker_runner_gets_container_paths(tmp_path: Path, study_file: Path):
    loop = make_loop(tmp_path, study_file, FakeRunner())
    loop.preflight()
    study_dir = loop.prepare()
    loop.execute()
    request = RunRequest.model_validate_json((study_dir / "runs" / "e001-c1" / "experiment.json").read_text())
    assert request.model_path == "/llem/model" and request.runner == "docker"


def test_the_hf_token_reaches_only_runs_that_may_download_and_is_removed_after(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_planted")
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "config.json").write_text("{}")
    seen: dict[str, object] = {}

    class Reading(FakeRunner):
        def run(self, spec, timeout_s, log_path, liveness=None):
            mount = spec.mount_at("/run/secrets/hf_token")
            if mount is not None:
                seen[spec.labels["llem.run"]] = (mount.source.read_text(), mount.source)
            else:
                seen[spec.labels["llem.run"]] = None
            return super().run(spec, timeout_s, log_path, liveness)

    study = tmp_path / "s.yaml"
    study.write_text(
        "name: t\ndataset: {source: builtin, n_prompts: 1}\n"
        "experiments:\n  - model: ./local\n  - model: org/hub-model\n"
    )
    loop = make_loop(tmp_path, study, Reading())
    loop.options = dataclasses.replace(loop.options, hf_home=tmp_path / "hf")
    loop.preflight()
    study_dir = loop.prepare()
    loop.execute()
    assert seen["e001-c1"] is None  # a local model: no token at all
    token, path = seen["e002-c1"]  # type: ignore[misc]
    assert token == "hf_planted" and not path.exists()  # removed with its directory after the run
    assert all("hf_planted" not in p.read_text(errors="replace") for p in study_dir.rglob("*") if p.is_file())


def test_the_token_file_is_removed_when_the_run_never_starts(tmp_path: Path, monkeypatch):
    """A device lock refused while the run waits: the secret written for it must not stay behind."""
    import tempfile

    from llem.errors import EnvironmentProblem
    from llem.locks import DeviceLocks

    monkeypatch.setenv("HF_TOKEN", "hf_planted")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    study = tmp_path / "s.yaml"
    study.write_text("name: t\nmodel: org/hub-model\ndataset: {source: builtin, n_prompts: 1}\n")
    loop = make_loop(tmp_path, study, FakeRunner())
    loop.options = dataclasses.replace(loop.options, hf_home=tmp_path / "hf", lock_wait_s=0.05)
    loop.preflight()
    loop.prepare()
    held = DeviceLocks(["cpu"], tmp_path / "locks")
    assert held.try_acquire()
    try:
        with pytest.raises(EnvironmentProblem, match="locked by another study"):
            loop.execute()
    finally:
        held.release()
    assert list((tmp_path / "tmp").iterdir()) == []
