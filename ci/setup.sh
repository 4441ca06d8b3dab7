#!/usr/bin/env bash
# Installs everything a fresh Debian 12 machine lacks: the Debian packages listed in
# ci/apt-packages.txt and a virtualenv (.venv) with the weft package and its dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t pkgs < <(grep -vE '^\s*(#|$)' ci/apt-packages.txt)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
echo "setup: installing Python dependencies into .venv"
.venv/bin/pip install -q --disable-pip-version-check -r ci/pip-source-built.txt -e '.[test,guest]'
