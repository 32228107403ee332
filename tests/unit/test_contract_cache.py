"""The image fingerprint cache: a container is created once per image id, never per run."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llem.docker_runner import DockerRunner
from llem.errors import EnvironmentProblem
from llem_agent.contract import CONTRACT_FINGERPRINT_PATH, contract_fingerprint


def _tar(name: str, text: str) -> bytes:
    data = text.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class FakeDocker:
    """Images by reference, each with an id and the fingerprint file its containers hold."""

    def __init__(self, images: dict[str, tuple[str, str]]) -> None:
        self.created: list[str] = []
        self.removed = 0
        outer = self

        class Images:
            def get(self, ref: str) -> Any:
                return SimpleNamespace(id=images[ref][0])

        class Containers:
            def create(self, ref: str, **kwargs: Any) -> Any:
                outer.created.append(ref)
                payload = _tar(Path(CONTRACT_FINGERPRINT_PATH).name, images[ref][1] + "\n")
                return SimpleNamespace(
                    get_archive=lambda path: ([payload], {}),
                    remove=lambda force: setattr(outer, "removed", outer.removed + 1),
                )

        self.images = Images()
        self.containers = Containers()


def test_the_fingerprint_is_read_once_per_image_id(tmp_path: Path) -> None:
    fake = FakeDocker({"a:1": ("sha256:aaa", contract_fingerprint()), "b:1": ("sha256:bbb", contract_fingerprint())})
    cache = tmp_path / "contracts"
    for _ in range(3):  # three llem invocations
        DockerRunner(lambda: fake, contract_cache=cache).check(["a:1"])  # type: ignore[arg-type,return-value]
    assert fake.created == ["a:1"] and fake.removed == 1
    assert (cache / "sha256-aaa").read_text().strip() == contract_fingerprint()
    DockerRunner(lambda: fake, contract_cache=cache).check(["b:1"])  # type: ignore[arg-type,return-value]
    assert fake.created == ["a:1", "b:1"]


def test_a_cached_mismatch_is_still_refused_and_no_cache_reads_every_time(tmp_path: Path) -> None:
    fake = FakeDocker({"old:1": ("sha256:old", "0" * 16)})
    cache = tmp_path / "contracts"
    for _ in range(2):
        with pytest.raises(EnvironmentProblem, match="speaks wire contract 0000000000000000"):
            DockerRunner(lambda: fake, contract_cache=cache).check(["old:1"])  # type: ignore[arg-type,return-value]
    assert fake.created == ["old:1"]
    for _ in range(2):
        with pytest.raises(EnvironmentProblem):
            DockerRunner(lambda: fake).check(["old:1"])  # type: ignore[arg-type,return-value]
    assert len(fake.created) == 3


def test_an_unwritable_cache_costs_time_not_the_run(tmp_path: Path) -> None:
    fake = FakeDocker({"a:1": ("sha256:aaa", contract_fingerprint())})
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    DockerRunner(lambda: fake, contract_cache=blocked / "contracts").check(["a:1"])  # type: ignore[arg-type,return-value]
    assert fake.created == ["a:1"]
