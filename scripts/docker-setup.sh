#!/usr/bin/env bash
# Gets this machine ready for the docker executor (`apothic worker --executor docker`) and its
# tests: installs Docker and debootstrap, starts dockerd, and builds the base image the
# executor's Debian slim images start from (apothic-base:bookworm, Python 3.11). Also installs
# strace, which the durability test uses to count the control plane's fsyncs.
#
# Idempotent: each part runs only when missing. Needs root. There is no image registry here,
# so the base image is made with debootstrap (~2-3 minutes the first time).
set -euo pipefail

BASE_IMAGE="${APOTHIC_BASE_IMAGE:-apothic-base:bookworm}"
MIRROR="${APOTHIC_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DOCKERD_LOG="${APOTHIC_DOCKERD_LOG:-/var/log/apothic-dockerd.log}"

if [ "$(id -u)" != 0 ]; then
    echo "docker-setup: run as root" >&2
    exit 1
fi

# The package's own docker client goes in /usr/bin; a newer client already on PATH is fine.
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    echo "== docker-setup: installing docker.io and debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io debootstrap >/dev/null
fi

if ! command -v strace >/dev/null; then
    echo "== docker-setup: installing strace"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq strace >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    echo "== docker-setup: starting dockerd (log: $DOCKERD_LOG)"
    nohup dockerd >"$DOCKERD_LOG" 2>&1 &
    for _ in $(seq 1 120); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    if ! docker info >/dev/null 2>&1; then
        echo "docker-setup: dockerd did not come up; its log:" >&2
        tail -n 40 "$DOCKERD_LOG" >&2 || true
        exit 1
    fi
fi

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "== docker-setup: building $BASE_IMAGE with debootstrap (a few minutes)"
    root="$(mktemp -d /var/tmp/apothic-base.XXXXXX)"
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include=python3 bookworm "$root" "$MIRROR" >/dev/null
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    # The label tells the executor the image's Python without starting a container to ask.
    tar -C "$root" -c . | docker import --change "LABEL apothic.python=3.11" - "$BASE_IMAGE" >/dev/null
fi

echo "== docker-setup: ready ($(docker version --format '{{.Server.Version}}'), $BASE_IMAGE present)"
