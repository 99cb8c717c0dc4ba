#!/usr/bin/env bash
# Debian packages the test suite needs: the Noto Color Emoji font (`openhart data emoji`) and
# Chromium with its WebDriver (the browser test of `openhart serve`, tests/web), and g++ with the
# Python headers (torch.compile on the CPU, `--compile`).
# Installs only what is missing; uses sudo when not root.
set -euo pipefail
packages=(fonts-noto-color-emoji chromium chromium-driver g++ python3-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "system-deps: not a Debian system; install ${missing[*]} yourself" >&2
  exit 1
fi
run() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
export DEBIAN_FRONTEND=noninteractive
run apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || { run apt-get update -q >/dev/null && run apt-get install -y -q "${missing[@]}" >/dev/null; }
