"""Images from a registry: a real one (Debian's docker-registry on 127.0.0.1:5000, started by
tests/tools/ensure-registry.sh, which `make test` runs). An image a study names and this host
lacks is pulled, checked and its digest recorded; `llem pull` fetches ahead of time."""

from __future__ import annotations

import json
import subprocess
import uuid

import docker
import pytest

from llem import __version__
from llem.errors import EXIT_ENVIRONMENT, EXIT_OK
from tests.conftest import REPO
from tests.helpers import run_llem

REGISTRY = "127.0.0.1:5000"
IMAGE = f"llem/pytorch:{__version__}"


@pytest.fixture(scope="session")
def registry() -> str:
    done = subprocess.run(
        ["bash", str(REPO / "tests" / "tools" / "ensure-registry.sh")], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"no registry ({done.stderr.strip()[-400:]}); `make test` starts one")
    return REGISTRY


def push(client: docker.DockerClient, source: str, ref: str) -> str:
    """Push ``source`` as ``ref``, remove ``ref`` here; the digest the registry gave it."""
    repository, tag = ref.rsplit(":", 1)
    client.images.get(source).tag(repository, tag)
    digest = None
    for event in client.api.push(repository, tag=tag, stream=True, decode=True):
        assert "error" not in event, event
        digest = (event.get("aux") or {}).get("Digest", digest)
    client.images.remove(ref)
    assert digest is not None
    return digest


def test_a_study_naming_a_registry_image_pulls_it_and_records_its_digest(tmp_path, registry, tiny_model, docker_client):
    ref = f"{registry}/llem/pytorch:test-{uuid.uuid4().hex[:8]}"
    digest = push(docker_client, IMAGE, ref)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(ref)
    done = run_llem("run", str(REPO / "examples" / "quickstart.yaml"), "--cycles", "1", "--image", f"pytorch={ref}",
                    "--results-dir", str(tmp_path / "results"), "--lock-dir", str(tmp_path / "locks"))  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr + done.stdout
    assert f"pulling {ref}" in done.stderr
    (study_dir,) = (tmp_path / "results").iterdir()
    host = json.loads((study_dir / "host.json").read_text())
    recorded = json.dumps(host)
    assert f"{registry}/llem/pytorch@{digest}" in recorded  # the digest of exactly what ran
    manifest = json.loads((study_dir / "manifest.json").read_text())
    assert {r["image"] for r in manifest["runs"]} == {ref} and {r["status"] for r in manifest["runs"]} == {"completed"}
    docker_client.images.remove(ref)


def test_llem_pull_fetches_ahead_and_refuses_what_is_not_an_llem_image(tmp_path, registry, docker_client):
    good = f"{registry}/llem/pytorch:ahead-{uuid.uuid4().hex[:8]}"
    digest = push(docker_client, IMAGE, good)
    study = REPO / "examples" / "quickstart.yaml"
    done = run_llem("pull", str(study), "--image", f"pytorch={good}")
    assert done.returncode == EXIT_OK, done.stderr
    assert f"{registry}/llem/pytorch@{digest}" in done.stdout
    assert docker_client.images.get(good).id == docker_client.images.get(IMAGE).id
    foreign = f"{registry}/llem/pytorch:foreign-{uuid.uuid4().hex[:8]}"
    push(docker_client, "llem/base:bookworm", foreign)
    refused = run_llem("pull", str(study), "--image", f"pytorch={foreign}")
    assert refused.returncode == EXIT_ENVIRONMENT
    assert "no llem contract fingerprint" in refused.stderr and "Traceback" not in refused.stderr
    for ref in (good, foreign):
        docker_client.images.remove(ref)


def test_an_image_no_registry_has_is_one_line_and_no_study_directory(tmp_path, registry, docker_client):
    ref = f"{registry}/llem/pytorch:missing-{uuid.uuid4().hex[:8]}"
    done = run_llem("run", str(REPO / "examples" / "quickstart.yaml"), "--image", f"pytorch={ref}",
                    "--results-dir", str(tmp_path / "results"))  # fmt: skip
    assert done.returncode == EXIT_ENVIRONMENT
    (line,) = [x for x in done.stderr.strip().splitlines() if x.startswith("llem: error")]
    assert f"image {ref} is not on this host and cannot be pulled" in line
    assert not (tmp_path / "results").exists()
    no_pull = run_llem("run", str(REPO / "examples" / "quickstart.yaml"), "--image", f"pytorch={ref}", "--no-pull",
                       "--results-dir", str(tmp_path / "results"))  # fmt: skip
    assert no_pull.returncode == EXIT_ENVIRONMENT and "not found" in no_pull.stderr


def test_llem_k8s_names_an_image_this_host_has_by_its_digest(tmp_path, registry, docker_client):
    """A tag can move between planning and a pod's start: the Jobs name the image by digest."""
    worker = f"llem/pytorch-worker:{__version__}"
    ref = f"{registry}/llem/pytorch-worker:test-{uuid.uuid4().hex[:8]}"
    digest = push(docker_client, worker, ref)
    docker_client.images.pull(*ref.rsplit(":", 1))  # here again, with the registry's digest
    try:
        done = run_llem("k8s", str(REPO / "examples" / "quickstart.yaml"), "--out", str(tmp_path / "k8s"),
                        "--results-dir", str(tmp_path / "shared"), "--pvc", "results", "--cpu",
                        "--image", f"pytorch={ref}")  # fmt: skip
        assert done.returncode == EXIT_OK, done.stderr
        (job,) = tmp_path.joinpath("k8s").glob("*.yaml")
        assert f"image: {registry}/llem/pytorch-worker@{digest}" in job.read_text()  # was: by tag
        untagged = run_llem("k8s", str(REPO / "examples" / "quickstart.yaml"), "--out", str(tmp_path / "k8s2"),
                            "--results-dir", str(tmp_path / "shared"), "--pvc", "results", "--cpu",
                            "--image", "pytorch=registry.invalid/llem/pytorch-worker:nowhere")  # fmt: skip
        assert untagged.returncode == EXIT_OK and "no registry digest on this host" in untagged.stderr
    finally:
        docker_client.images.remove(ref)
