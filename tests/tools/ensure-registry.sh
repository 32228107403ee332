#!/bin/bash
# A local image registry for the docker tier's pull tests: Debian's docker-registry (the CNCF
# distribution registry) serving 127.0.0.1:5000, storage under $LLEM_REGISTRY_BASE. Docker
# pushes to and pulls from a registry on 127.0.0.1 without TLS. Idempotent. Test-only: users
# pull llem's images from ghcr.io (or their own registry).
set -euo pipefail
BASE=${LLEM_REGISTRY_BASE:-/tmp/llem-registry}
ADDR=${LLEM_REGISTRY_ADDR:-127.0.0.1:5000}

up() { python3 -c "import urllib.request,sys; urllib.request.urlopen('http://$ADDR/v2/', timeout=2)" 2>/dev/null; }
if up; then exit 0; fi
if ! command -v docker-registry >/dev/null; then
  if [ "$(id -u)" != 0 ]; then echo "ensure-registry: needs root to install docker-registry" >&2; exit 1; fi
  echo "ensure-registry: installing docker-registry (Debian package)" >&2
  apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-registry >/dev/null
fi
mkdir -p "$BASE/data"
cat > "$BASE/config.yml" <<CONF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $BASE/data
  delete:
    enabled: true
http:
  addr: $ADDR
CONF
nohup docker-registry serve "$BASE/config.yml" > "$BASE/registry.log" 2>&1 &
echo $! > "$BASE/registry.pid"
for _ in $(seq 1 30); do
  if up; then exit 0; fi
  sleep 0.5
done
echo "ensure-registry: the registry did not come up; see $BASE/registry.log" >&2
exit 1
