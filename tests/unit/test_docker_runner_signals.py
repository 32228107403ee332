"""DockerRunner.run against an in-memory Docker: an interrupt that lands while a container is
being created never leaves a container nobody knows of."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from llem.container import LABEL_HOST, LABEL_HOST_PID, LABEL_MANAGED, ContainerSpec, Mount
from llem.docker_runner import DockerRunner
from llem.errors import EnvironmentProblem


class Stopped(Exception):
    """What this test's SIGTERM handler raises (llem's raises KeyboardInterrupt)."""


class FakeContainer:
    def __init__(self, daemon: FakeDaemon, name: str, labels: dict[str, str]) -> None:
        self.daemon, self.name, self.labels, self.id = daemon, name, labels, name
        self.status, self.attrs = "created", {"State": {"OOMKilled": False}}

    def start(self) -> None:
        self.daemon.events.append(f"start {self.name}")
        self.status = "running"

    def wait(self, timeout: float) -> dict[str, int]:
        self.status = "exited"
        return {"StatusCode": 0}

    def kill(self) -> None: ...

    def reload(self) -> None: ...

    def logs(self, **_: Any) -> bytes:
        return b"log\n"

    def remove(self, force: bool = False) -> None:
        self.daemon.events.append(f"remove {self.name}")
        del self.daemon.containers[self.name]


class FakeDaemon:
    """Enough of docker.DockerClient().containers for one run; ``on_create`` runs inside create,
    after the daemon has made the container and before the client has it."""

    def __init__(self) -> None:
        self.containers: dict[str, FakeContainer] = {}
        self.events: list[str] = []
        self.on_create = lambda: None

    def create(self, image: str, **kwargs: Any) -> FakeContainer:
        name = kwargs["name"]
        if name in self.containers:
            raise docker.errors.APIError("Conflict", response=_Conflict())
        made = self.containers[name] = FakeContainer(self, name, kwargs["labels"])
        self.events.append(f"create {name}")
        self.on_create()
        return made

    def run(self, image: str, **kwargs: Any) -> FakeContainer:  # what llem called before
        made = self.create(image, **kwargs)
        made.start()
        return made

    def get(self, name: str) -> FakeContainer:
        try:
            return self.containers[name]
        except KeyError:
            raise docker.errors.NotFound(name) from None


class _Conflict:
    status_code = 409
    reason = "Conflict"
    url = "http://docker/containers/create"


class FakeClient:
    def __init__(self, daemon: FakeDaemon) -> None:
        self.containers = daemon


def spec(tmp_path: Path, pid: int | None = None) -> ContainerSpec:
    labels = {LABEL_MANAGED: "true", LABEL_HOST: socket.gethostname(), LABEL_HOST_PID: str(pid or os.getpid())}
    return ContainerSpec(
        image="llem/pytorch:test", name="llem-s-e001-c1", command=("x",), labels=labels, environment={},
        passthrough_env=(), mounts=(Mount(tmp_path, "/llem/run", False),), gpu_ids=(), network_disabled=True,
        user="1000:1000",
    )  # fmt: skip


@pytest.fixture
def sigterm_raises() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise Stopped

    before = signal.signal(signal.SIGTERM, handler)
    yield
    signal.signal(signal.SIGTERM, before)


@pytest.fixture(params=["alone", "beside another thread"])
def threads(request: pytest.FixtureRequest) -> Iterator[None]:
    """A second thread that blocks no signal, as rich's refresh thread is while llem runs: the
    kernel may hand it a SIGTERM sent to the process, and Python then runs the handler in the main
    thread at once, whatever that thread has masked."""
    if request.param == "alone":
        yield
        return
    done = threading.Event()
    other = threading.Thread(target=done.wait, daemon=True)
    other.start()
    yield
    done.set()
    other.join()


def test_sigterm_while_the_container_is_created_removes_it(tmp_path: Path, sigterm_raises: None, threads: None) -> None:
    daemon = FakeDaemon()

    def on_create() -> None:  # the signal lands inside create, and the handler has time to run there
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)

    daemon.on_create = on_create
    runner = DockerRunner(client_factory=lambda: FakeClient(daemon))  # type: ignore[arg-type, return-value]
    with pytest.raises(Stopped):
        runner.run(spec(tmp_path), 10, tmp_path / "container.log")
    assert daemon.containers == {}, f"left running: {list(daemon.containers)}"
    assert daemon.events == ["create llem-s-e001-c1", "start llem-s-e001-c1", "remove llem-s-e001-c1"]
    assert (tmp_path / "container.log").read_bytes() == b"log\n"
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # delivered, not left held


def test_a_leftover_of_a_dead_llem_is_removed_and_one_of_a_live_llem_refused(tmp_path: Path) -> None:
    daemon = FakeDaemon()
    runner = DockerRunner(client_factory=lambda: FakeClient(daemon))  # type: ignore[arg-type, return-value]
    dead = 2**22 + 17  # above pid_max: no such process
    daemon.create("llem/pytorch:test", name="llem-s-e001-c1", labels=spec(tmp_path, dead).labels)
    outcome = runner.run(spec(tmp_path), 10, tmp_path / "container.log")
    assert outcome.exit_code == 0 and daemon.containers == {}
    assert daemon.events[1:] == ["remove llem-s-e001-c1", "create llem-s-e001-c1", "start llem-s-e001-c1",
                                 "remove llem-s-e001-c1"]  # fmt: skip
    daemon.create("llem/pytorch:test", name="llem-s-e001-c1", labels=spec(tmp_path, 1).labels)  # pid 1 lives
    with pytest.raises(EnvironmentProblem, match="still run by llem process 1 on this host"):
        runner.run(spec(tmp_path), 10, tmp_path / "container.log")
    assert list(daemon.containers) == ["llem-s-e001-c1"]  # never removed from under its owner
