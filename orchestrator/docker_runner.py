"""The only module that talks to Docker. Vendor errors become llem errors here."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import signal
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.utils import parse_repository_tag

from llem_agent.contract import CONTRACT_FINGERPRINT_PATH, contract_fingerprint, write_atomic

from . import __version__
from .container import LABEL_HOST, LABEL_HOST_PID, LABEL_MANAGED, ContainerSpec, Mount
from .errors import EnvironmentProblem
from .procs import process_alive
from .runner import ContainerOutcome, Liveness, PullProgress, supervise

# Labels of llem's worker image (images/worker): an engine image plus llem, for Kubernetes pods.
LABEL_WORKER_IMAGE = "io.llem.worker"
LABEL_BUILT_FROM = "io.llem.engine-image"


def _docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env(version="auto", timeout=60)
        client.ping()
    except docker.errors.DockerException as exc:
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise EnvironmentProblem(
            f"Docker daemon not reachable at {host} ({_first_line(exc)}); start Docker or set DOCKER_HOST"
        ) from None
    return client


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _api_error(exc: docker.errors.APIError) -> str:
    """The daemon's own explanation, without the request URL and runc's boilerplate (the cause
    is at the end: 'error setting rlimit type 8: operation not permitted')."""
    text = str(getattr(exc, "explanation", None) or exc).strip().splitlines()[0]
    for noise in ("failed to create shim task: ", "OCI runtime create failed: ", "runc create failed: ",
                  "unable to start container process: "):  # fmt: skip
        text = text.replace(noise, "")
    return text[:400]


def _start_problem(spec: ContainerSpec, exc: docker.errors.APIError) -> EnvironmentProblem:
    message = _api_error(exc)
    if "device driver" in message or "nvidia" in message.lower():
        return EnvironmentProblem(
            f"cannot give the container its GPUs ({message}); install the NVIDIA container toolkit"
        )
    return EnvironmentProblem(f"cannot start container for {spec.name}: {message}")


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM for the body; they are delivered, and their handler raises, as it
    ends. For a window that must not be cut in two: a container created must be known to whoever
    removes it.

    Python runs signal handlers in the main thread only, so the main thread defers them by
    swapping its handlers for ones that note the signal, and raises what was noted once the body
    is done. (Blocking them with ``pthread_sigmask`` would hold them in this thread alone: the
    kernel hands a process-directed signal to any other thread, rich's refresh thread for one,
    and the handler would still run here, mid-window.) Off the main thread no handler can cut the
    body, and there is nothing to hold."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []

    def note(signum: int, frame: object) -> None:
        if signum not in noted:
            noted.append(signum)

    before: dict[signal.Signals, Any] = {}
    for held in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(held) is not None:  # None: set outside Python, and not to be put back
            before[held] = signal.signal(held, note)
    try:
        yield
    finally:
        for held, handler in before.items():
            signal.signal(held, handler)
        for signum in noted:
            signal.raise_signal(signum)  # to this thread: its handler runs, and raises, now


def _run_kwargs(spec: ContainerSpec) -> dict[str, Any]:
    environment = dict(spec.environment) | dict(spec.container_environment or {})
    environment.update({k: os.environ[k] for k in spec.passthrough_env if os.environ.get(k)})
    kwargs: dict[str, Any] = {
        "command": list(spec.command),
        "name": spec.name,
        "labels": spec.labels,
        "environment": environment,
        "volumes": {str(m.source): {"bind": m.target, "mode": "ro" if m.read_only else "rw"} for m in spec.mounts},
        "user": spec.user,
        "group_add": list(spec.group_add),
        "detach": True,
        # Hardening: nothing the agent needs is lost, everything else is.
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": spec.read_only_root,
        "tmpfs": spec.tmpfs or {},
    }
    if spec.pids_limit:
        kwargs["pids_limit"] = spec.pids_limit
    if spec.cpuset:
        kwargs["cpuset_cpus"] = ",".join(str(c) for c in spec.cpuset)
    if spec.memory_limit:
        kwargs["mem_limit"] = spec.memory_limit
        kwargs["memswap_limit"] = spec.memory_limit  # no swap: the limit is the limit
    if spec.network_disabled:
        kwargs["network_mode"] = "none"
    if spec.shm_size:
        kwargs["shm_size"] = spec.shm_size
    if spec.ulimits:
        kwargs["ulimits"] = [docker.types.Ulimit(name=n, soft=soft, hard=hard) for n, soft, hard in spec.ulimits]
    if spec.gpu_ids:
        kwargs["device_requests"] = [
            docker.types.DeviceRequest(driver="nvidia", device_ids=list(spec.gpu_ids), capabilities=[["gpu"]])
        ]
    return kwargs


_LAYER_DONE = ("Pull complete", "Already exists", "Download complete")


def repository_digest(digests: list[str], ref: str) -> str | None:
    """Of an image's registry digests (``repo@sha256:...``), the one of ``ref``'s repository."""
    repository = parse_repository_tag(ref)[0]
    return next((d for d in digests if d.partition("@")[0] == repository), None)


class DockerRunner:
    """Runs agent containers with the Docker SDK: start, wait with a timeout, keep the log, remove."""

    kind = "docker"

    def __init__(
        self,
        client_factory: Callable[[], docker.DockerClient] = _docker_client,
        contract_cache: Path | None = None,
        on_pull: PullProgress | None = None,
    ) -> None:
        """``on_pull``: pull a missing image, reporting progress there (None: refuse it)."""
        self._factory = client_factory
        self._client: docker.DockerClient | None = None
        self._on_pull = on_pull
        # Reading an image's fingerprint means creating a container (~0.3 s); an image id names
        # its content, so the answer for an id never changes and is kept here, one file per id.
        self._contract_cache = contract_cache

    def agent_path(self, mount: Mount) -> str:
        return mount.target

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = self._factory()
        return self._client

    def server(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The Docker daemon's version and info (``llem doctor``); a daemon that does not answer
        is an EnvironmentProblem of one line."""
        try:
            client = self.client
            return client.version(), client.info()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise EnvironmentProblem(_first_line(exc)) from None

    def check(self, images: Iterable[str]) -> None:
        """Fail early, before any results directory exists, when Docker or an image is missing,
        or when an image's agent speaks another wire contract than this llem."""
        for image in sorted(set(images)):
            problem = self.image_problem(image)
            if problem:
                raise EnvironmentProblem(problem)

    def image_problem(self, image: str) -> str | None:
        """Why ``image`` cannot run llem's experiments, with the fix; None when it can. A missing
        image is pulled first when this runner pulls."""
        try:
            image_id = self._image_id(image)
        except docker.errors.DockerException as exc:
            return f"cannot inspect image {image}: {_first_line(exc)}"
        if image_id is None:
            return (
                f"image {image} not found; pull it (llem pull, or docker pull {image}) or build it "
                "(`make images` builds the pytorch one, `docker compose build <engine>-agent` any)"
            )
        labels = getattr(self.client.images.get(image), "labels", None) or {}
        if labels.get(LABEL_WORKER_IMAGE) == "true":  # its entrypoint is llem, not llem-agent
            return (
                f"image {image} is llem's worker image (what the pods of llem k8s run), not an agent image: give "
                f"the engine image it was built from (images/worker: {labels.get(LABEL_BUILT_FROM) or '<engine>'})"
            )
        theirs, ours = self.image_contract(image, image_id), contract_fingerprint()
        if theirs is None:
            return f"image {image} has no llem contract fingerprint (not an llem {__version__} agent image); rebuild it"
        if theirs != ours:
            return (
                f"image {image} speaks wire contract {theirs}, this llem {__version__} speaks {ours}; "
                "rebuild it from this checkout (make images) or use the image of this llem version"
            )
        return None

    def has_image(self, image: str) -> bool:
        """Whether this host has ``image`` (never pulls)."""
        try:
            self.client.images.get(image)
            return True
        except docker.errors.ImageNotFound:
            return False
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise EnvironmentProblem(_first_line(exc)) from None

    def _image_id(self, image: str) -> str | None:
        """The local image's id; a missing one is pulled first when this runner pulls."""
        try:
            return str(self.client.images.get(image).id)
        except docker.errors.ImageNotFound:
            if self._on_pull is None:
                return None
        problem = self.pull(image, self._on_pull)
        if problem is not None:
            raise EnvironmentProblem(problem)
        return str(self.client.images.get(image).id)

    def pull(self, image: str, on_progress: PullProgress) -> str | None:
        """Pull ``image`` from its registry, reporting bytes done of bytes to fetch; why not, or None."""
        repository, tag = parse_repository_tag(image)
        layers: dict[str, tuple[int, int]] = {}
        try:
            for event in self.client.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
                if "error" in event:
                    raise docker.errors.DockerException(str(event["error"]))
                layer, detail = event.get("id"), event.get("progressDetail") or {}
                if layer and detail.get("total"):
                    layers[layer] = (int(detail.get("current", 0)), int(detail["total"]))
                elif layer and event.get("status") in _LAYER_DONE:
                    total = layers.get(layer, (0, 0))[1]
                    layers[layer] = (total, total)
                on_progress(image, sum(d for d, _ in layers.values()), sum(t for _, t in layers.values()))
        except docker.errors.APIError as exc:
            why = _api_error(exc)
        except docker.errors.DockerException as exc:
            why = _first_line(exc)
        else:
            return None
        return (
            f"image {image} is not on this host and cannot be pulled ({why}); check its name and the "
            "registry login (docker login), or build it (`make images` builds the pytorch one)"
        )

    def image_contract(self, image: str, image_id: str | None = None) -> str | None:
        """The fingerprint stored in the image at build time, read without starting it
        (from the cache when ``image_id`` has been read before)."""
        cached = self._contract_cache / image_id.replace(":", "-") if self._contract_cache and image_id else None
        if cached is not None:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                return cached.read_text(encoding="utf-8").strip() or None
        fingerprint = self._read_contract(image)
        if cached is not None and fingerprint is not None:
            with contextlib.suppress(OSError):  # a cache that cannot be written only costs time
                cached.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(cached, fingerprint + "\n")
        return fingerprint

    def _read_contract(self, image: str) -> str | None:
        try:
            container = self.client.containers.create(
                image, command=["true"], labels={LABEL_MANAGED: "true", LABEL_HOST_PID: str(os.getpid()),
                                                 LABEL_HOST: socket.gethostname()}, network_disabled=True,
            )  # fmt: skip
        except docker.errors.DockerException:
            return None
        try:
            stream, _ = container.get_archive(CONTRACT_FINGERPRINT_PATH)
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
                member = archive.extractfile(os.path.basename(CONTRACT_FINGERPRINT_PATH))
                return member.read().decode().strip() if member else None
        except (docker.errors.DockerException, tarfile.TarError, KeyError):
            return None
        finally:
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)

    def describe(self, images: Iterable[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """The Docker server's version, and each image's id, digests and labels (for host.json)."""
        try:
            version = self.client.version()
            server = {"version": version.get("Version"), "api_version": version.get("ApiVersion")}
            described = {}
            for ref in sorted(set(images)):
                image = self.client.images.get(ref)
                described[ref] = {
                    "id": image.id,
                    "repo_digests": image.attrs.get("RepoDigests", []),
                    "labels": image.labels,
                }
        except docker.errors.DockerException as exc:
            raise EnvironmentProblem(f"cannot describe the Docker engine or images: {_first_line(exc)}") from None
        return server, described

    def run(
        self, spec: ContainerSpec, timeout_s: float, log_path: Path, liveness: Liveness | None = None
    ) -> ContainerOutcome:
        """Run ``spec`` to completion, ``timeout_s``, or a stale heartbeat; the container is always
        removed. It is created, known here, then started, with Ctrl-C and SIGTERM held over that
        window (they are delivered right after it), so no interrupt leaves a container nobody
        knows of running; one this call could not bind is removed by its name."""
        start, started_at = time.monotonic(), time.time()
        container: Container | None = None
        try:
            with signals_held():
                container = self._create(spec)
                self._start(container, spec)
            outcome = self._follow(container, timeout_s, liveness, start, started_at)
            image_id, image_digest = self._image_of(container, spec.image)
            return dataclasses.replace(outcome, image_id=image_id, image_digest=image_digest)
        finally:
            if container is not None:
                self._save_log(container, log_path)
                with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                    container.remove(force=True)
            else:
                self._remove_own(spec.name)

    def _create(self, spec: ContainerSpec) -> Container:
        """Create the run's container; a leftover of the same name whose llem process is gone (a
        worker killed -9 mid-run) is removed first."""
        for attempt in (1, 2):
            try:
                created: Container = self.client.containers.create(spec.image, **_run_kwargs(spec))
                return created
            except docker.errors.ImageNotFound:
                raise EnvironmentProblem(f"image {spec.image} not found; build it with `make images`") from None
            except docker.errors.APIError as exc:
                if exc.status_code == 409 and attempt == 1 and self._remove_leftover(spec.name):
                    continue
                raise _start_problem(spec, exc) from None
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                raise EnvironmentProblem(f"cannot create container for {spec.name}: {_first_line(exc)}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _start(container: Container, spec: ContainerSpec) -> None:
        try:
            container.start()
        except docker.errors.APIError as exc:
            raise _start_problem(spec, exc) from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise EnvironmentProblem(f"cannot start container for {spec.name}: {_first_line(exc)}") from None

    @staticmethod
    def _follow(
        container: Container, timeout_s: float, liveness: Liveness | None, start: float, started_at: float
    ) -> ContainerOutcome:
        exit_code: int | None = None

        def exited(seconds: float) -> bool:
            nonlocal exit_code
            try:
                exit_code = int(container.wait(timeout=seconds).get("StatusCode", -1))
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                return False
            return True

        def kill() -> None:
            with contextlib.suppress(docker.errors.DockerException):
                container.kill()

        timed_out, hung = supervise(exited, kill, timeout_s, liveness, start=start, started_at=started_at)
        oom = False
        with contextlib.suppress(docker.errors.DockerException):
            container.reload()
            oom = bool(container.attrs.get("State", {}).get("OOMKilled", False))
        return ContainerOutcome(exit_code, timed_out, oom, time.monotonic() - start, hung)

    def _image_of(self, container: Container, ref: str) -> tuple[str | None, str | None]:
        """The id of the image ``container`` ran (the daemon's, whatever ``ref`` names now) and a
        registry digest of it, of ``ref``'s repository where it has several; None where unknown."""
        image_id = (container.attrs or {}).get("Image")
        if not isinstance(image_id, str) or not image_id:
            return None, None
        try:
            digests = [str(d) for d in self.client.images.get(image_id).attrs.get("RepoDigests") or []]
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            digests = []  # the image was removed meanwhile: its id is still what ran
        return image_id, repository_digest(digests, ref) or next(iter(digests), None)

    def _leftover(self, name: str) -> Container | None:
        try:
            found: Container = self.client.containers.get(name)
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return None
        return found

    def _remove_leftover(self, name: str) -> bool:
        """Remove the container ``name`` if it is llem's and its llem process on this host is gone
        (or is this one); refuse one a live llem process still runs."""
        found = self._leftover(name)
        if found is None:
            return True  # gone since: create again
        labels = found.labels or {}
        pid = labels.get(LABEL_HOST_PID, "")
        if labels.get(LABEL_MANAGED) != "true" or labels.get(LABEL_HOST) != socket.gethostname() or not pid.isdigit():
            raise EnvironmentProblem(f"a container named {name} exists and is not this host's llem's; remove it")
        if int(pid) != os.getpid() and process_alive(int(pid)):
            raise EnvironmentProblem(
                f"container {name} of this run is still run by llem process {pid} on this host; "
                "stop that process or wait for it"
            )
        with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
            found.remove(force=True)
        return True

    def _remove_own(self, name: str) -> None:
        """Remove ``name`` if this process made it (its create came back to nobody: an error or an
        interrupt between the daemon's answer and this process binding it)."""
        found = self._leftover(name)
        if found is not None and (found.labels or {}).get(LABEL_HOST_PID) == str(os.getpid()):
            with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                found.remove(force=True)

    @staticmethod
    def _save_log(container: Container, log_path: Path) -> None:
        try:
            data = container.logs(stdout=True, stderr=True)
        except docker.errors.DockerException as exc:
            data = f"(container log unavailable: {_first_line(exc)})\n".encode()
        log_path.write_bytes(data)

    @staticmethod
    def remove_gone(container: Container) -> bool:
        """Remove a container whose llem is gone; False when it was removed already."""
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            return False
        return True

    def managed_containers(self) -> list[Container]:
        """Every container carrying llem's label, running or not. The SDK inspects each container
        it lists: one removed in between (another llem's run ending) is listed again without it."""
        for _ in range(4):
            try:
                found: list[Container] = self.client.containers.list(
                    all=True, filters={"label": f"{LABEL_MANAGED}=true"}
                )
                return found
            except docker.errors.NotFound:
                continue
        return self.client.containers.list(all=True, filters={"label": f"{LABEL_MANAGED}=true"})
