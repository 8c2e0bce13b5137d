#!/usr/bin/env bash
# Build the agent image (deploy/agent.Dockerfile) with podman, on a machine that reaches no
# container registry: the Debian base is made by mmdebstrap from the host's apt mirror, and
# the project goes in as wheels built here (pip inside the build would not trust this
# network's TLS). Prints the image pinned by digest (what VIDFLEET_VAST_IMAGE should name) and
# its size; `make image` runs it.
#
#   deploy/build-image.sh [TAG]          TAG defaults to localhost/vidfleet-agent:dev
#
# Podman's storage lives in $VIDFLEET_PODMAN_ROOT (default /var/tmp/vidfleet-podman), so
# rebuilds reuse the base and the apt layer. Needs root (mmdebstrap, podman) and the
# packages mmdebstrap, podman and runc.
set -euo pipefail

TAG=${1:-localhost/vidfleet-agent:dev}
ROOT=${VIDFLEET_PODMAN_ROOT:-/var/tmp/vidfleet-podman}
PY=${PY:-.venv/bin/python}
BASE=docker.io/library/debian:bookworm-slim
HERE=$(cd "$(dirname "$0")/.." && pwd)
cd "$HERE"
mkdir -p "$ROOT"

# runc, not crun (crun here: "cgroups in hybrid mode not supported"); ulimits the sandbox
# allows (no CAP_SYS_RESOURCE).
cat > "$ROOT/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF=$ROOT/containers.conf
podman() { command podman --root "$ROOT/storage" --runroot "$ROOT/runroot" "$@"; }

if ! podman image exists "$BASE"; then
  # The official slim image's apt and dpkg settings, so the image layers stay small.
  settings=$(mktemp -d)
  trap 'rm -rf "$settings"' EXIT
  mkdir -p "$settings/etc/apt/apt.conf.d" "$settings/etc/dpkg/dpkg.cfg.d"
  cat > "$settings/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
  echo 'Acquire::GzipIndexes "true";' > "$settings/etc/apt/apt.conf.d/docker-gzip-indexes"
  echo 'Acquire::Languages "none";' > "$settings/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Apt::AutoRemove::SuggestsImportant "false";' \
    > "$settings/etc/apt/apt.conf.d/docker-autoremove-suggests"
  echo 'force-unsafe-io' > "$settings/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
  # The host's mirrors, for the same three suites.
  debian=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' \
           /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  security=$(awk '/^URIs:/ && $2 ~ /security/ {print $2; exit}' \
             /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  debian=${debian:-http://deb.debian.org/debian}
  security=${security:-http://deb.debian.org/debian-security}
  mmdebstrap --quiet --variant=minbase \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook="sync-in $settings /" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm "$ROOT/rootfs.tar" "deb $debian bookworm main" \
    "deb $debian bookworm-updates main" "deb $security bookworm-security main"
  podman import --quiet --change 'CMD ["bash"]' "$ROOT/rootfs.tar" "$BASE" >/dev/null
  rm -f "$ROOT/rootfs.tar"
fi

# The project and its dependencies as wheels, into the build context (build/ is ignored by
# git and, but for the wheels, by the build: see .containerignore).
rm -rf build/wheels
"$PY" -m pip wheel --quiet --disable-pip-version-check --wheel-dir build/wheels/deps .
# Ours apart from the dependencies: the image installs them in separate layers.
mkdir -p build/wheels/app
mv build/wheels/deps/vidfleet-*.whl build/wheels/app/
podman build --quiet --pull=never --network host -f deploy/agent.Dockerfile -t "$TAG" . \
  >/dev/null
# Each rebuild leaves the previous image untagged; its layers would pile up in $ROOT.
podman image prune --force >/dev/null
podman image inspect --format '{{.Digest}} {{.Size}}' "$TAG" | {
  read -r digest size
  echo "${TAG%:*}@$digest $((size / 1000000)) MB"
}
