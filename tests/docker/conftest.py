"""Docker tier: a real engine and the images built from images/ by `make images`.

These tests fail (they are never skipped) when Docker or the image is missing:
`make test` installs and starts the engine and builds the images before running them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from llem import __version__
from llem.container import LABEL_MANAGED
from tests.conftest import REPO, mark_folder

IMAGE = f"llem/pytorch:{__version__}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_folder(items, Path(__file__).parent, pytest.mark.docker)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(version="auto")
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"Docker engine not reachable ({exc}); run `make docker-engine` or use `make test`")
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"image {IMAGE} missing; run `make images`")
    yield client
    client.close()


def made_model(name: str, tmp_path_factory: pytest.TempPathFactory, *args: str) -> Path:
    """examples/models/NAME as `make tiny-model` leaves it, or made now through the image."""
    existing = REPO / "examples" / "models" / name
    if (existing / "config.json").exists():
        return existing
    out = tmp_path_factory.mktemp("models")
    subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "python", "-v", f"{out}:/out", IMAGE,
         "-m", "llem_agent.tiny_model", f"/out/{name}", *args],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return out / name


@pytest.fixture(scope="session")
def tiny_model(docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random GPT-2 of `make tiny-model`."""
    return made_model("tiny-gpt2", tmp_path_factory)


def labelled_containers(client: docker.DockerClient, **labels: str) -> list[str]:
    filters = [f"{LABEL_MANAGED}=true", *(f"{k}={v}" for k, v in labels.items())]
    return [c.name or c.id for c in client.containers.list(all=True, filters={"label": filters})]


MAKE_ADAPTER = """
import sys, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
# init_lora_weights=False: random B as well as A, so the adapter really changes the outputs.
peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, target_modules=["c_attn"], init_lora_weights=False))
peft.save_pretrained(sys.argv[2])
"""


def made_adapter(model: Path, targets: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random LoRA adapter on ``targets`` of ``model``, made with peft inside our image."""
    out = tmp_path_factory.mktemp("adapters")
    out.chmod(0o777)
    script = MAKE_ADAPTER.replace('["c_attn"]', repr(targets))
    subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-e", "HOME=/tmp", "--entrypoint", "python",
         "-v", f"{model}:/model:ro", "-v", f"{out}:/out", IMAGE, "-c", script, "/model", "/out/lora"],
        check=True, capture_output=True,
    )  # fmt: skip
    for path in (out / "lora").iterdir():
        path.chmod(0o644)
    return out / "lora"


@pytest.fixture(scope="session")
def tiny_adapter(
    docker_client: docker.DockerClient, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A random LoRA adapter for the tiny GPT-2."""
    return made_adapter(tiny_model, ["c_attn"], tmp_path_factory)


VLLM_IMAGE = f"llem/vllm-cpu:{__version__}"  # make images: vLLM's CPU build, the docker tier's only


@pytest.fixture(scope="session")
def vllm_image(docker_client: docker.DockerClient) -> str:
    try:
        docker_client.images.get(VLLM_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"image {VLLM_IMAGE} missing; run `make images`")
    return VLLM_IMAGE


@pytest.fixture(scope="session")
def tiny_llama(docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama of `make tiny-model` (head dim 64, as vLLM's CPU backend needs)."""
    return made_model("tiny-llama", tmp_path_factory, "--arch", "llama", "--size", "tiny")


@pytest.fixture(scope="session")
def tiny_llama_tp(docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with two KV heads of `make tiny-model`, which tensor parallelism splits."""
    return made_model("tiny-llama-tp", tmp_path_factory, "--arch", "llama", "--size", "tiny-tp")


@pytest.fixture(scope="session")
def tiny_llama_adapter(
    docker_client: docker.DockerClient, tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A random LoRA adapter (q_proj, v_proj) for the tiny Llama."""
    return made_adapter(tiny_llama, ["q_proj", "v_proj"], tmp_path_factory)
