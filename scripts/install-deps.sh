#!/usr/bin/env bash
# Installs, only when missing, every Debian package nearline needs to build, test and
# benchmark. Safe to run repeatedly: when everything is present it does nothing and
# touches no network. Needs root (or sudo) on Debian 12 when something is missing.
set -euo pipefail

# Build and test dependencies (the product and `make test`).
BUILD_PKGS=(
  build-essential cmake pkg-config git
  librocksdb-dev liburing-dev libzstd-dev libopenblas-dev libjansson-dev libmicrohttpd-dev
  libprotobuf-c-dev protobuf-c-compiler libcurl4-openssl-dev libzookeeper-mt-dev
  zookeeper default-jre-headless prometheus
  curl openssl zstd iproute2
  chromium
  libcriterion-dev strace libfuse3-dev fuse3 e2fsprogs
  python3 python3-numpy
)
# Benchmark references (bench/ only; `make bench` installs them).
BENCH_PKGS=(python3-faiss python3-hnswlib fio gnuplot-nox time wrk)

# The libFuzzer targets (`make fuzz`).
FUZZ_PKGS=(clang)

want=("${BUILD_PKGS[@]}")
if [ "${1:-}" = "--bench" ]; then
  want+=("${BENCH_PKGS[@]}")
elif [ "${1:-}" = "--fuzz" ]; then
  want+=("${FUZZ_PKGS[@]}")
fi

missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "install-deps: need root to install: ${missing[*]}" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when they are absent or a first install attempt fails.
if ! $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
  $SUDO apt-get update -q >/dev/null
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi
