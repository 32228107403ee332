#!/usr/bin/env bash
# Build a minimal Debian base image with no container registry at all: debootstrap a root
# filesystem from the Debian mirror, then `docker import` it. This is how llem images are
# built on air-gapped clusters and on machines that cannot pull from a registry.
#
#   images/tools/build-base-image.sh [TAG]          (default TAG: llem/base:bookworm)
# Environment: SUITE (bookworm), MIRROR (Debian mirror URL), CA_BUNDLE (a PEM file appended
# to the image's trusted certificates, for TLS-intercepting proxies), FORCE=1 to rebuild.
set -euo pipefail

tag="${1:-llem/base:bookworm}"
suite="${SUITE:-bookworm}"
mirror="${MIRROR:-http://deb.debian.org/debian}"
docker="${DOCKER:-docker}"

if [ -z "${FORCE:-}" ] && "$docker" image inspect "$tag" >/dev/null 2>&1; then
    echo "base image $tag already present (FORCE=1 to rebuild)"
    exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing debootstrap"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    else
        echo "error: debootstrap is required to build $tag (apt-get install debootstrap)" >&2
        exit 1
    fi
fi

rootfs="$(mktemp -d /tmp/llem-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap $suite -> $rootfs"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"
if [ -n "${CA_BUNDLE:-}" ]; then
    [ -s "$CA_BUNDLE" ] || { echo "error: CA_BUNDLE $CA_BUNDLE is missing or empty" >&2; exit 1; }
    install -m 0644 "$CA_BUNDLE" "$rootfs/usr/local/share/ca-certificates/llem-extra.crt"
    cat "$CA_BUNDLE" >>"$rootfs/etc/ssl/certs/ca-certificates.crt"
fi
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

echo "docker import -> $tag"
tar -C "$rootfs" -c . | "$docker" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$tag" >/dev/null
echo "built $tag"
