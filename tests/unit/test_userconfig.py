"""User config: defaults < file < environment < CLI, and a clear error for a broken file."""

from __future__ import annotations

from pathlib import Path

import pytest

from llem.errors import ConfigError
from llem.session import resolve_images
from llem.userconfig import load_user_config


def _write(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    monkeypatch.setenv("LLEM_CONFIG", str(path))
    return path


def test_defaults_without_a_file():
    cfg = load_user_config()
    assert not cfg.file_found
    assert cfg.value("measurement.datacenter_pue") == 1.0
    assert cfg.value("measurement.carbon_intensity_gco2_kwh") is None
    assert cfg.settings["output.results_dir"].source == "default"
    assert cfg.images()["vllm"].startswith("ghcr.io/llem-project/llem/vllm:")


def test_file_then_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    path = _write(
        monkeypatch,
        tmp_path,
        "output:\n  results_dir: /data/llem\nmeasurement:\n  datacenter_pue: 1.3\n  carbon_intensity_gco2_kwh: 350\n"
        "images:\n  vllm: ghcr.io/acme/llem/vllm:0.1.0\nrunners:\n  transformers: docker:my/pt:1\n",
    )
    cfg = load_user_config()
    assert cfg.results_dir == Path("/data/llem")
    assert cfg.settings["measurement.datacenter_pue"].source == f"user config {path}"
    assert cfg.images()["pytorch"] == "my/pt:1" and cfg.images()["vllm"] == "ghcr.io/acme/llem/vllm:0.1.0"
    monkeypatch.setenv("LLEM_CARBON_INTENSITY", "386")
    monkeypatch.setenv("LLEM_DATACENTER_PUE", "1.5")
    factors = load_user_config().factors()
    assert factors.carbon_intensity_gco2_kwh == 386.0 and factors.datacenter_pue == 1.5
    assert factors.sources["datacenter_pue"] == "env LLEM_DATACENTER_PUE"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "measurement:\n  datacenter_pu: 1.2\n",
            "unknown key 'measurement.datacenter_pu' (did you mean 'datacenter_pue'?)",
        ),
        (
            "measurement:\n  datacenter_pue: 0.5\n",
            "measurement.datacenter_pue: Input should be greater than or equal to 1",
        ),
        ("output: [\n", "not valid YAML"),
        ("- a\n", "expected a mapping"),
        ("runners:\n  onnx: docker\n", "unknown engine 'onnx'"),
        ("runners:\n  vllm: kubernetes\n", "expected docker, docker:<image> or local"),
    ],
)
def test_broken_file_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str, fragment: str):
    path = _write(monkeypatch, tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_user_config()
    assert str(path) in str(info.value) and fragment in str(info.value)


@pytest.mark.parametrize("value", ["abc", "-1", "99999"])
def test_bad_environment_values(monkeypatch: pytest.MonkeyPatch, value: str):
    monkeypatch.setenv("LLEM_CARBON_INTENSITY", value)
    with pytest.raises(ConfigError, match="LLEM_CARBON_INTENSITY"):
        load_user_config()


def test_image_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    _write(monkeypatch, tmp_path, "images:\n  pytorch: from/file:1\n  vllm: from/file:2\n")
    cfg = load_user_config()
    images = resolve_images({"pytorch": "from/study:1"}, [], cfg)
    assert images["pytorch"] == "from/study:1" and images["vllm"] == "from/file:2"
    monkeypatch.setenv("LLEM_IMAGE_PYTORCH", "from/env:1")
    images = resolve_images({"pytorch": "from/study:1"}, ["vllm=from/flag:2"], load_user_config())
    assert images["pytorch"] == "from/env:1" and images["vllm"] == "from/flag:2"


def test_llem_config_says_which_engines_this_host_has(monkeypatch, capsys):
    """003: `llem config` also says which engines are installed; --verbose the environment."""
    import json

    from llem.cli import main
    from llem.docker_runner import DockerRunner

    monkeypatch.setattr(DockerRunner, "server", lambda self: ({"Version": "27.0", "ApiVersion": "1.46"}, {}))
    monkeypatch.setattr(DockerRunner, "has_image", lambda self, image: image.endswith("/pytorch:0.1.0"))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object() if name == "vllm" else None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abc")
    assert main(["config", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(e["engine"], e["image_here"], e["importable"]) for e in doc["engines"]] == [
        ("pytorch", True, False),
        ("vllm", False, True),
        ("tensorrt", False, False),
    ]
    assert "environment" not in doc
    assert main(["config", "--json", "--verbose"]) == 0
    env = json.loads(capsys.readouterr().out)["environment"]
    assert env["docker"] == {"version": "27.0", "api_version": "1.46"}
    assert env["environment"]["CUDA_VISIBLE_DEVICES"] == "GPU-abc"
    assert main(["config"]) == 0
    table = capsys.readouterr().out
    assert "engines on this host" in table and "not here (llem pull)" in table and "importable" in table


def test_llem_config_without_docker_says_so(monkeypatch, capsys):
    import json

    from llem.cli import main
    from llem.docker_runner import DockerRunner
    from llem.errors import EnvironmentProblem

    def no_daemon(self):
        raise EnvironmentProblem("Cannot connect to the Docker daemon")

    monkeypatch.setattr(DockerRunner, "server", no_daemon)
    assert main(["config", "--json", "--verbose"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {e["image_here"] for e in doc["engines"]} == {None}
    assert doc["environment"]["docker"] == {"unreachable": "Cannot connect to the Docker daemon"}
