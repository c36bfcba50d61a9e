#!/usr/bin/env bash
# Installs what Drake needs on a fresh Debian 12 machine, skipping what is there.
# Sourced by scripts/run and scripts/test; safe to run again.
set -euo pipefail

APT_PACKAGES=(
  # Building ffmpeg-sys-next: bindgen needs libclang, linking needs the libav*-dev headers.
  clang libclang-dev pkg-config
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev libavfilter-dev libavdevice-dev
  # The ffmpeg/ffprobe CLIs: tests make media with them and the benchmarks compare against them.
  ffmpeg
  # Peak-memory measurements in the benchmarks.
  time
  # nginx with its dav module: the external WebDAV storage the farm tests publish to.
  nginx-core
  # PostgreSQL: the second backend. The tests start throwaway clusters with its
  # binaries (as the postgres user when run as root); nothing uses its main cluster.
  postgresql
  # Headless Chromium and its WebDriver: the dashboard's browser tests.
  chromium chromium-driver
  curl ca-certificates
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node and npm: the tests install third-party judges (npm hls-parser) into target/npm.
# Any Node >= 18 will do; Debian's packages only where there is none.
if ! command -v npm >/dev/null 2>&1; then
  missing+=(nodejs npm)
fi
# pip: the upload tests install PyPI tuspy into target/pip.
if ! python3 -m pip --version >/dev/null 2>&1; then
  missing+=(python3-pip)
fi
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: installing the Rust toolchain with rustup" >&2
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
