#!/usr/bin/env bash
# Make sure a Docker engine answers. On a fresh Debian machine where we are root, install
# Debian's docker.io (+ docker-compose v1) and start dockerd in the background; elsewhere
# say what to do. Idempotent: does nothing when `docker info` already works.
set -euo pipefail

docker="${DOCKER:-docker}"
if "$docker" info >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "error: the Docker daemon is not reachable; start Docker (or set DOCKER_HOST)" >&2
    exit 1
fi
if ! command -v dockerd >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || { echo "error: no dockerd and no apt-get; install Docker" >&2; exit 1; }
    echo "installing Docker Engine (Debian docker.io, docker-compose)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose >/dev/null
fi
log="${DOCKERD_LOG:-/tmp/llem-dockerd.log}"
echo "starting dockerd (log: $log)"
nohup dockerd --host unix:///var/run/docker.sock >"$log" 2>&1 &
for _ in $(seq 1 60); do
    if "$docker" info >/dev/null 2>&1; then
        exit 0
    fi
    sleep 1
done
echo "error: dockerd did not come up within 60 s; see $log" >&2
tail -5 "$log" >&2 || true
exit 1
