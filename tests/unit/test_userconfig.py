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
