"""Test tiers by marker: unit (default), docker (real engine + our images), gpu (NVML device)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parent.parent

# The property tests assert what the code does, not how fast it does it (make bench times things):
# no per-example deadline. Hypothesis's default of 200 ms failed a correct sweep example at 221 ms
# on a loaded 2-core machine.
settings.register_profile("llem", deadline=None)
settings.load_profile("llem")


def _nvml_device_count() -> int:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


def mark_folder(items: list[pytest.Item], folder: Path, marker: pytest.MarkDecorator) -> None:
    """Give every test collected under ``folder`` the tier ``marker`` (docker, browser)."""
    for item in items:
        if folder in Path(str(item.fspath)).parents:
            item.add_marker(marker)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # gpu tests run wherever NVML finds a device, and are skipped only where it finds none.
    if any(item.get_closest_marker("gpu") for item in items) and _nvml_device_count() == 0:
        skip = pytest.mark.skip(reason="no NVIDIA GPU visible through NVML")
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_user_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's own ~/.config/llem or measurement factors from the shell."""
    monkeypatch.setenv("LLEM_CONFIG", str(tmp_path_factory.mktemp("userconfig") / "config.yaml"))
    for name in ("LLEM_CARBON_INTENSITY", "LLEM_DATACENTER_PUE", "LLEM_DATACENTER_LOCATION", "LLEM_RESULTS_DIR"):
        monkeypatch.delenv(name, raising=False)
