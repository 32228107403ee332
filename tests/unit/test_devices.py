"""The GPUs a study may use (issue 19, item 10): what this process was given (CUDA_VISIBLE_DEVICES,
as CUDA reads it), narrowed by --gpus, and NVML's errors as one line each. NVML is faked:
a host of four GPUs unless a test says otherwise."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from llem.devices import allowed_gpus, nvml_gpus
from llem.errors import EXIT_CONFIG, EXIT_ENVIRONMENT, ConfigError, EnvironmentProblem
from tests.helpers import run_llem

NO_PERMISSION, DRIVER_NOT_LOADED, GPU_IS_LOST = 4, 9, 15
WORDS = {NO_PERMISSION: "Insufficient Permissions", DRIVER_NOT_LOADED: "Driver Not Loaded", GPU_IS_LOST: "GPU is lost"}

# NVML index -> (UUID, name, PCI bus id). Two UUIDs share the prefix GPU-a.
H100S = [
    ("GPU-aaaa1111-0000-0000-0000-000000000000", "NVIDIA H100", "00000000:1B:00.0"),
    ("GPU-aaaa2222-0000-0000-0000-000000000000", "NVIDIA H100", "00000000:3B:00.0"),
    ("GPU-cccc3333-0000-0000-0000-000000000000", "NVIDIA H100", "00000000:5B:00.0"),
    ("GPU-dddd4444-0000-0000-0000-000000000000", "NVIDIA H100", "00000000:9B:00.0"),
]
UUID = [u for u, _, _ in H100S]


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return WORDS.get(self.value, f"error {self.value}")


class FakeNvml:
    """The slice of pynvml that orchestrator.devices uses, over a list of devices."""

    NVMLError = NVMLError
    NVML_ERROR_NO_PERMISSION = NO_PERMISSION
    NVML_ERROR_DRIVER_NOT_LOADED = DRIVER_NOT_LOADED
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_GPU_IS_LOST = GPU_IS_LOST
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
    NVML_DEVICE_MIG_ENABLE = 1

    def __init__(self, devices: list[tuple[str, str, str]], init_error: int | None = None) -> None:
        self.devices = devices
        self.init_error = init_error
        self.denied: dict[int, int] = {}  # index -> the error opening it raises
        self.mig: set[int] = set()
        self.inits = 0

    def nvmlInit(self) -> None:
        self.inits += 1
        if self.init_error is not None:
            raise NVMLError(self.init_error)

    def nvmlShutdown(self) -> None: ...

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        if i in self.denied:
            raise NVMLError(self.denied[i])
        return i

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self.devices[handle][0]

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self.devices[handle][1]

    def nvmlDeviceGetMigMode(self, handle: int) -> tuple[int, int]:
        mode = 1 if handle in self.mig else 0
        return mode, mode

    def nvmlDeviceGetPciInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(busId=self.devices[handle][2].encode())


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml(list(H100S))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def allowed(spec: str | None = None, **env: str) -> tuple[tuple[int, ...], dict[int, str]]:
    return allowed_gpus(spec, env)


def refused(spec: str | None = None, **env: str) -> str:
    with pytest.raises(EnvironmentProblem) as caught:
        allowed_gpus(spec, env)
    message = str(caught.value)
    assert "\n" not in message and caught.value.exit_code == EXIT_ENVIRONMENT
    return message


# --- what the process was given ------------------------------------------------------------


def test_unset_means_every_gpu_nvml_sees(nvml):
    assert allowed() == ((0, 1, 2, 3), dict(enumerate(UUID)))


def test_indices_are_those_gpus_in_their_order(nvml):
    assert allowed(CUDA_VISIBLE_DEVICES="2,0") == ((2, 0), {2: UUID[2], 0: UUID[0]})
    assert allowed(CUDA_VISIBLE_DEVICES=" 3 ") == ((3,), {3: UUID[3]})


def test_uuids_and_unambiguous_uuid_prefixes_name_gpus(nvml):
    assert allowed(CUDA_VISIBLE_DEVICES=f"{UUID[3]},GPU-cccc")[0] == (3, 2)
    assert allowed(CUDA_VISIBLE_DEVICES="gpu-AAAA2222")[0] == (1,)  # as CUDA: case does not matter


def test_an_empty_value_is_the_cpu_path_without_asking_nvml(nvml):
    assert allowed(CUDA_VISIBLE_DEVICES="") == ((), {})
    assert nvml.inits == 0


@pytest.mark.parametrize(
    ("visible", "indices"),
    [("-1", ()), ("0,2,-1,1", (0, 2)), ("1,,3", (1,)), ("1,3,", (1, 3)), ("NoDevFiles", ())],
)
def test_the_list_ends_where_cuda_stops_reading_it(nvml, visible, indices):
    assert allowed(CUDA_VISIBLE_DEVICES=visible)[0] == indices


@pytest.mark.parametrize(
    ("visible", "fragment"),
    [
        ("0,7", "there is no GPU 7 here (CUDA numbers 4: 0 = GPU-aaaa1111"),
        ("GPU-ffff", "no GPU's UUID starts with GPU-ffff"),
        ("GPU-aaaa", "2 GPUs' UUIDs start with GPU-aaaa (CUDA numbers 4"),
        ("0,bogus", "'bogus' is neither a GPU index nor a GPU UUID"),
        ("1,GPU-aaaa2222", "names GPU 1 (GPU-aaaa2222-0000-0000-0000-000000000000) twice"),
        ("MIG-5c1e0000-1111-2222-3333-444455556666", "names the MIG instance MIG-5c1e0000"),
    ],
)
def test_an_entry_that_names_no_single_whole_gpu_is_one_line(nvml, visible, fragment):
    # CUDA would stop silently at the first of these; llem would then measure other GPUs than meant.
    message = refused(CUDA_VISIBLE_DEVICES=visible)
    assert fragment in message and message.startswith(f"CUDA_VISIBLE_DEVICES={visible}")


def test_an_index_is_cudas_pci_bus_order_not_nvmls_index(nvml):
    nvml.devices = [H100S[1], H100S[0]]  # NVML index 0 sits on bus 3B, index 1 on bus 1B
    assert allowed(CUDA_VISIBLE_DEVICES="0")[0] == (1,)
    assert allowed(CUDA_VISIBLE_DEVICES="1")[0] == (0,)


def test_on_mixed_models_an_index_needs_the_pci_bus_order(nvml):
    nvml.devices = [H100S[0], ("GPU-bbbb-a100", "NVIDIA A100", "00000000:3B:00.0")]
    message = refused(CUDA_VISIBLE_DEVICES="1")
    assert "CUDA's default order (fastest first)" in message and "CUDA_DEVICE_ORDER=PCI_BUS_ID" in message
    assert allowed(CUDA_VISIBLE_DEVICES="1", CUDA_DEVICE_ORDER="PCI_BUS_ID")[0] == (1,)
    assert allowed(CUDA_VISIBLE_DEVICES="1,0")[0] == (1, 0)  # every GPU: the set is the same in any order
    assert allowed(CUDA_VISIBLE_DEVICES="GPU-bbbb")[0] == (1,)


def test_slurms_cgroup_numbers_the_jobs_gpus_from_zero(nvml):
    """The job got physical GPUs 4 and 5: NVML and CUDA_VISIBLE_DEVICES say 0 and 1."""
    nvml.devices = H100S[:2]
    assert allowed(CUDA_VISIBLE_DEVICES="0,1")[0] == (0, 1)
    message = refused("4,5", CUDA_VISIBLE_DEVICES="0,1")  # what --gpus ${SLURM_JOB_GPUS} would say
    assert message == (
        f"--gpus 4,5: there is no GPU 4 here; available: 0: {UUID[0]} (NVIDIA H100), 1: {UUID[1]} (NVIDIA H100)"
    )


# --- --gpus: by index or UUID, within what was given ---------------------------------------


def test_gpus_by_uuid_or_prefix_are_their_nvml_indices(nvml):
    assert allowed(f"{UUID[2]},GPU-dddd") == ((2, 3), {2: UUID[2], 3: UUID[3]})
    assert allowed("GPU-dddd,1", CUDA_VISIBLE_DEVICES="1,3")[0] == (3, 1)


def test_gpus_outside_what_the_process_was_given_is_one_line_naming_what_is(nvml):
    message = refused("2", CUDA_VISIBLE_DEVICES="0,1")
    assert message == (
        f"--gpus 2: GPU 2 ({UUID[2]}) was not given to this process (CUDA_VISIBLE_DEVICES=0,1); "
        f"available: 0: {UUID[0]} (NVIDIA H100), 1: {UUID[1]} (NVIDIA H100)"
    )
    assert "GPU 3 (GPU-dddd4444" in refused("GPU-dddd", CUDA_VISIBLE_DEVICES=f"{UUID[0]}")


def test_gpus_nvml_does_not_see_is_an_environment_problem(nvml):
    assert refused("0,9").startswith("--gpus 0,9: there is no GPU 9 here; available: 0: GPU-aaaa1111")
    assert "there is no GPU GPU-ffff here" in refused("GPU-ffff")
    assert "--gpus GPU-aaaa: 2 GPUs' UUIDs start with GPU-aaaa; available: 0:" in refused("GPU-aaaa")


def test_gpus_given_none_by_the_environment_is_one_line(nvml):
    assert "this process was given no GPU (CUDA_VISIBLE_DEVICES='')" in refused("0", CUDA_VISIBLE_DEVICES="")
    assert allowed("", CUDA_VISIBLE_DEVICES="0") == ((), {})  # --gpus= : the CPU path (a parallel CPU slot)


@pytest.mark.parametrize("spec", ["a,b", "0,-1", "GPU-", "1.5"])
def test_malformed_gpus_is_a_config_error(nvml, spec):
    with pytest.raises(ConfigError, match="--gpus expects comma-separated GPU indices or UUIDs") as caught:
        allowed(spec)
    assert caught.value.exit_code == EXIT_CONFIG


def test_a_gpu_named_twice_in_gpus_is_refused(nvml):
    with pytest.raises(ConfigError, match="names a GPU twice"):
        allowed(f"0,{UUID[0]}")


def test_mig_is_refused_by_gpus_and_for_a_gpu_in_mig_mode(nvml):
    assert "names the MIG instance MIG-1234" in refused("MIG-1234")
    nvml.mig = {1}
    assert "GPU 1 (NVIDIA H100) is in MIG mode" in refused(CUDA_VISIBLE_DEVICES="1")
    assert allowed(CUDA_VISIBLE_DEVICES="0")[0] == (0,)


# --- NVML's errors, one line each ---------------------------------------------------------


def test_no_permission_to_reach_nvml_is_one_line_saying_what_to_check(nvml):
    nvml.init_error = NO_PERMISSION
    message = refused()
    assert message.startswith("NVML could not start: Insufficient Permissions; check that this user can open")
    assert "/dev/nvidiactl" in message and "CUDA_VISIBLE_DEVICES= for the CPU path" in message
    assert allowed(CUDA_VISIBLE_DEVICES="") == ((), {})  # the way out it names
    assert nvml_gpus() == ([], message)  # doctor and gpu-check say the same, without raising


def test_a_gpu_the_cgroup_denies_is_left_out_until_it_is_asked_for(nvml):
    nvml.denied = {1: NO_PERMISSION}
    assert allowed()[0] == (0, 2, 3)
    message = refused("1")
    assert message.startswith("--gpus 1: NVML could not open GPU 1: Insufficient Permissions; check that")
    nvml.denied = dict.fromkeys(range(4), NO_PERMISSION)
    assert refused().startswith("NVML could not open GPU 0: Insufficient Permissions")


def test_other_nvml_errors_are_one_line_too(nvml):
    nvml.denied = dict.fromkeys(range(4), GPU_IS_LOST)
    assert "GPU is lost; the GPU fell off the bus" in refused()


def test_no_driver_is_the_cpu_path_as_before(nvml):
    nvml.init_error = DRIVER_NOT_LOADED
    assert allowed() == ((), {})
    assert allowed(CUDA_VISIBLE_DEVICES="0") == ((), {})  # nothing here to give
    assert nvml_gpus() == ([], "NVML unavailable: Driver Not Loaded")
    assert refused("0") == "--gpus 0: there is no GPU 0 here; available: none (NVML unavailable: Driver Not Loaded)"


# --- through the command line ----------------------------------------------------------------


def test_the_command_line_says_a_missing_gpu_in_one_line(tmp_path: Path):
    study = tmp_path / "s.yaml"
    study.write_text("model: gpt2\n")
    missing = run_llem("run", str(study), "--gpus", "97", "--results-dir", str(tmp_path / "r"))
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == EXIT_ENVIRONMENT and len(lines) == 1, missing.stderr
    assert "--gpus 97: there is no GPU 97 here" in lines[0]
    malformed = run_llem("run", str(study), "--gpus", "0;1", "--results-dir", str(tmp_path / "r"))
    assert malformed.returncode == EXIT_CONFIG and "--gpus expects" in malformed.stderr
