#!/usr/bin/env bash
# make image-test: build the image from the Dockerfile with a real Docker daemon, start it on loopback ports with
# a read-only root filesystem, and wait for /readyz. Where no registry serves python:3.11.14-slim-bookworm, the base
# is Debian bookworm's own Python 3.11, made with debootstrap and `docker import` (TOLLBOOTH_BASE_IMAGE names
# another). Docker runs without a bridge or iptables (--network host for builds and the container).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=.tools
BASE=${TOLLBOOTH_BASE_IMAGE:-tollbooth-test-base:bookworm}
IMAGE=tollbooth:image-test
DEADLINE=${IMAGE_TEST_DEADLINE:-90}

step() { echo "image-test: $*"; }

need() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  if [ ${#missing[@]} -gt 0 ]; then
    step "installing ${missing[*]} from Debian"
    apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
  fi
}

start_daemon() {
  if docker info >/dev/null 2>&1; then return; fi
  step "starting dockerd (no bridge, no iptables; log in $TOOLS/dockerd.log)"
  mkdir -p "$TOOLS"
  dockerd --bridge=none --iptables=false >"$TOOLS/dockerd.log" 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && return; sleep 1; done
  echo "image-test: dockerd did not start; see $TOOLS/dockerd.log" >&2
  exit 1
}

make_base() {
  if docker image inspect "$BASE" >/dev/null 2>&1; then return; fi
  step "making the base image $BASE with debootstrap (a few minutes, once)"
  local root="$TOOLS/rootfs-bookworm"
  rm -rf "$root"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$root" >"$TOOLS/debootstrap.log" 2>&1 \
    || { echo "image-test: debootstrap failed; see $TOOLS/debootstrap.log" >&2; exit 1; }
  # The Dockerfile calls `python`, as the official image names it.
  ln -sf python3 "$root/usr/bin/python"
  # The build reaches PyPI from this host's network: trust what the host trusts (e.g. an egress proxy's CA).
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import - "$BASE" >/dev/null
  rm -rf "$root"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

run_container() {
  local dir proxy issuer admin name=tollbooth-image-test
  dir=$(mktemp -d)
  proxy=$(free_port); issuer=$(free_port); admin=$(free_port)
  sed -e "s/0.0.0.0:8080/127.0.0.1:$proxy/" -e "s/0.0.0.0:8081/127.0.0.1:$issuer/" -e "s/0.0.0.0:/127.0.0.1:/" \
    config/container.yaml >"$dir/tollbooth.yaml"
  cp config/routes.yaml "$dir/routes.yaml"
  chmod -R a+rX "$dir"
  docker rm -f "$name" >/dev/null 2>&1 || true
  step "starting the container (proxy $proxy, issuer $issuer, admin $admin)"
  docker run -d --name "$name" --network host --read-only --tmpfs /tmp --tmpfs /var/lib/tollbooth:uid=10001,gid=10001 \
    -v "$dir:/etc/tollbooth:ro" -e TOLLBOOTH_ADMIN_PORT="$admin" \
    -e UPSTREAM_URL=http://127.0.0.1:9 -e UPSTREAM_API_KEY=image-test "$IMAGE" >/dev/null
  local ready=""
  for _ in $(seq "$DEADLINE"); do
    if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$admin/readyz', timeout=2)" 2>/dev/null; then
      ready=yes; break
    fi
    [ "$(docker inspect -f '{{.State.Running}}' "$name")" = true ] || break
    sleep 1
  done
  if [ -z "$ready" ]; then
    docker logs "$name" >&2 || true
    docker rm -f "$name" >/dev/null; rm -rf "$dir"
    echo "image-test: FAILED: /readyz did not answer 200 within ${DEADLINE}s" >&2
    exit 1
  fi
  step "/readyz answered 200; stopping (SIGTERM)"
  docker stop -t 40 "$name" >/dev/null
  local code
  code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
  docker rm "$name" >/dev/null; rm -rf "$dir"
  [ "$code" = 0 ] || { echo "image-test: FAILED: the gateway exited $code on SIGTERM" >&2; exit 1; }
}

need
start_daemon
make_base
step "building $IMAGE on $BASE"
# The classic builder: no BuildKit frontend image to fetch, which is what an offline build host has.
DOCKER_BUILDKIT=0 docker build --network host --build-arg PYTHON_IMAGE="$BASE" -t "$IMAGE" . >"$TOOLS/image-build.log" 2>&1 \
  || { tail -30 "$TOOLS/image-build.log" >&2; echo "image-test: FAILED: docker build (log: $TOOLS/image-build.log)" >&2; exit 1; }
run_container
echo "image-test: ok"
