"""What `llem run` no longer does before its first container or after its last: work that could
only fail, or that nobody asked for (issue 21's overhead). Each test fails when its shortcut is
taken out, and the ones that skip work show the answer is the one the long way gives."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pynvml
import pytest

from llem import devices, summary
from llem.devices import NO_NVML_LIBRARY, NvmlView, read_nvml


@pytest.fixture
def no_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host without NVIDIA's driver, whatever this one has; nvidia-ml-py not imported yet."""
    monkeypatch.delenv("LLEM_SIMULATE_GPUS", raising=False)
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.setattr(devices, "_no_nvml_library", lambda: True)


def test_without_nvmls_library_nvidia_ml_py_is_not_imported(no_library):
    assert read_nvml() == NvmlView(absent=f"NVML unavailable: {NO_NVML_LIBRARY}")
    assert "pynvml" not in sys.modules


def test_the_shortcut_says_what_nvidia_ml_py_says_without_the_library(monkeypatch: pytest.MonkeyPatch):
    """The same view both ways: nvidia-ml-py itself, made to find no library, and the shortcut."""
    monkeypatch.delenv("LLEM_SIMULATE_GPUS", raising=False)

    def no_such_library(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(pynvml, "CDLL", no_such_library)
    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setitem(sys.modules, "pynvml", pynvml)  # imported already: the shortcut is not taken
    assert read_nvml() == NvmlView(absent=f"NVML unavailable: {NO_NVML_LIBRARY}")
    assert str(pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)) == NO_NVML_LIBRARY


def test_without_nvidia_ml_py_too_it_is_said_as_before(no_library, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(devices.importlib.util, "find_spec", lambda name: None)
    assert read_nvml() == NvmlView(absent="nvidia-ml-py is not installed")


def test_the_library_is_looked_for_as_nvidia_ml_py_opens_it(monkeypatch: pytest.MonkeyPatch):
    opened: list[str] = []

    def cdll(name: str) -> object:
        opened.append(name)
        if name != "libnvidia-ml.so.1":
            raise OSError(name)
        return object()

    monkeypatch.setattr(devices.ctypes, "CDLL", cdll)
    monkeypatch.setattr(devices.sys, "platform", "linux")
    assert devices._no_nvml_library() is False
    assert opened == ["libnvidia-ml.so.1"]
    monkeypatch.setattr(devices.ctypes, "CDLL", lambda name: (_ for _ in ()).throw(OSError(name)))
    assert devices._no_nvml_library() is True
    monkeypatch.setattr(devices.sys, "platform", "win32")  # nvidia-ml-py's own search there
    assert devices._no_nvml_library() is False


def _plugin_probe(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A pydantic plugin, installed as a distribution on PYTHONPATH, that leaves a file when loaded."""
    marker = tmp_path / "plugin-loaded"
    site = tmp_path / "site"
    dist = site / "llem_probe_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: llem-probe-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pydantic]\nprobe = llem_probe_plugin:plugin\n")
    (site / "llem_probe_plugin.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n\n\nclass plugin:\n"
        "    @staticmethod\n    def new_schema_validator(*args, **kwargs):\n        return None, None, None\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env, marker


def test_the_command_loads_no_pydantic_plugin(tmp_path: Path):
    env, marker = _plugin_probe(tmp_path)
    llem = Path(sys.executable).parent / "llem"
    for command in ([str(llem), "--version"], [sys.executable, "-m", "llem", "--version"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        assert not marker.exists(), command


def test_the_library_and_the_users_own_setting_leave_plugins_loaded(tmp_path: Path):
    env, marker = _plugin_probe(tmp_path)
    library = [sys.executable, "-c", "import llem; llem.Options"]
    subprocess.run(library, env=env, check=True, capture_output=True)
    assert marker.exists()  # the probe works, and `import llem` keeps the user's plugins
    marker.unlink()
    command = [sys.executable, "-m", "llem", "--version"]
    subprocess.run(command, env={**env, "PYDANTIC_DISABLE_PLUGINS": "another"}, check=True, capture_output=True)
    assert marker.exists()  # the user's setting, not llem's


def test_result_models_are_built_by_the_prefetch_not_at_import():
    """Nobody reads a result before a run has run: the models are built while the agent starts."""
    probe = (
        "from llem_agent.contract import ExperimentResult, RunError\n"
        "before = [ExperimentResult.__pydantic_complete__, RunError.__pydantic_complete__]\n"
        "from llem import summary\n"
        "summary.prefetch_summary_modules()\n"
        "summary._prefetched[0].join(60)\n"
        "print(before, [ExperimentResult.__pydantic_complete__, RunError.__pydantic_complete__])\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[0] == "[False, False] [True, True]"


COLUMNS = {
    "floats": [1.5, None, 2.0],
    "ints": [1, 2, None],
    "ints_and_floats": [1, 2.5, None],
    "bools": [True, None, False],
    "texts": ["a", None, "b"],
    "nothing": [None, None, None],
    "text_and_int": ["auto", 1, None],  # made text, as before
}


def test_parquet_columns_have_the_types_pyarrow_infers_without_it_inferring(tmp_path: Path, monkeypatch):
    rows = [{name: values[i] for name, values in COLUMNS.items()} for i in range(3)]
    tried: list[str] = []
    real_import = __import__

    def counting(name: str, *args: object, **kwargs: object) -> object:
        if name not in sys.modules:
            tried.append(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr("builtins.__import__", counting)
    summary._write_parquet(rows, tmp_path / "runs.parquet")
    monkeypatch.undo()
    texts = {"text_and_int": ["auto", "1", None]}
    inferred = pa.table({name: pa.array(texts.get(name, values)) for name, values in COLUMNS.items()})
    written = pq.read_table(tmp_path / "runs.parquet")
    assert written.schema.equals(inferred.schema)
    assert written.equals(inferred)
    assert "dateutil.relativedelta" not in tried  # pyarrow inferred nothing
