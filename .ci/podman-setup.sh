#!/usr/bin/env bash
# Prepares this machine for the container-engine tests (marker "engine") and the docker/ images:
# podman + runc + catatonit from Debian, a containers.conf for this host's quirks, and a local
# base image (no registry is reachable here). Idempotent; the base image is built once per
# machine, keyed by a hash of what goes into it. See docker/README.md.
#
#   .ci/podman-setup.sh                 # prints the CONTAINERS_CONF and BASE_IMAGE to use
#   .ci/podman-setup.sh --images        # and builds docker/'s example model images
#   .ci/podman-setup.sh --router-image  # and builds the router's image (docker/Dockerfile)
#
# Needs root and apt. Everything lands under $MCE_ENGINE_HOME (default /var/lib/mce-router-engine).
set -euo pipefail
HOME_DIR="${MCE_ENGINE_HOME:-/var/lib/mce-router-engine}"
mkdir -p "$HOME_DIR"
exec 9>"$HOME_DIR/setup.lock"
flock 9  # two test sessions on one machine must not build the base image twice

need=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || need+=("$tool"); done
[ -x /usr/libexec/podman/catatonit ] || need+=(catatonit)
if [ ${#need[@]} -gt 0 ]; then
  echo "podman-setup: installing ${need[*]}" >&2
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc catatonit debootstrap >&2
fi

# crun refuses hybrid cgroups here, rlimits cannot be raised in this sandbox, and catatonit as
# PID 1 makes `stop` take 0.1-0.4 s instead of 5-10 s (docker/README.md).
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu); [ "$nproc" = unlimited ] && nproc=32768; [ "$nproc" -gt 32768 ] && nproc=32768
conf="$HOME_DIR/containers.conf"
cat >"$conf.tmp" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
init = true
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
mv "$conf.tmp" "$conf"
export CONTAINERS_CONF="$conf"

# Debian's own mirror, as configured for apt on this machine.
mirror=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
  | head -1 | awk '{print $2}' || true)
mirror="${mirror:-http://deb.debian.org/debian}"
packages="python3,python3-venv,ca-certificates"
key=$(printf 'bookworm minbase %s v1' "$packages" | sha256sum | cut -c1-12)
base="localhost/mce-base:$key"
if ! podman image exists "$base"; then
  echo "podman-setup: building $base from $mirror (about a minute, once per machine)" >&2
  rootfs="$HOME_DIR/rootfs-$key"
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" >&2
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$base" >&2
  rm -rf "$rootfs"
fi
podman tag "$base" localhost/mce-base:latest

repo="$(cd "$(dirname "$0")/.." && pwd)"
if [ "${1:-}" = --router-image ]; then
  # The router's image (docker/Dockerfile), hot path compiled: the wheels of its build and
  # runtime requirements (read from pyproject.toml) come from this machine's pip index.
  "${PYTHON:-python3}" - "$repo/pyproject.toml" >"$HOME_DIR/router-requirements.txt" <<'PY'
import sys, tomllib
data = tomllib.load(open(sys.argv[1], "rb"))
print("\n".join(data["build-system"]["requires"] + data["project"]["dependencies"]))
PY
  "${PYTHON:-python3}" -m pip download -q -d "$repo/docker/wheelhouse" \
    -r "$HOME_DIR/router-requirements.txt" >&2
  podman build -q --format docker --build-arg BASE_IMAGE="$base" --build-arg PIP_OPTIONS=--no-index \
    -f "$repo/docker/Dockerfile" -t localhost/mce-router:latest "$repo" >&2
fi
if [ "${1:-}" = --images ]; then
  # The example model images of docker/, from this base; pip finds its wheels locally.
  if ! ls "$repo"/docker/wheelhouse/*.whl >/dev/null 2>&1; then
    "${PYTHON:-python3}" -m pip download -q -d "$repo/docker/wheelhouse" "aiohttp>=3.9" "orjson>=3.10" >&2
  fi
  podman build -q --build-arg BASE_IMAGE="$base" --build-arg PIP_OPTIONS=--no-index \
    -f "$repo/docker/quickstart-model/Dockerfile" -t localhost/mce-quickstart-model:latest "$repo" >&2
  podman build -q --build-arg BASE_IMAGE="$base" \
    -f "$repo/docker/dir-model/Dockerfile" -t localhost/mce-dir-model:latest "$repo" >&2
fi
echo "CONTAINERS_CONF=$conf"
echo "BASE_IMAGE=$base"
