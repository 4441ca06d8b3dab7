#!/usr/bin/env bash
# The main job, from a fresh clone: install what is missing, build the OS image and boot it
# (serial console on this terminal; Ctrl-A x quits). Extra arguments go to `weft vm run`,
# e.g. `bash ci/up.sh --display gtk` or `--snapshot`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
# `weft image build` prints the image it wrote (its name comes from mkosi.conf's ImageId=).
image=$(.venv/bin/weft image build | tail -n 1)
# With Secure Boot firmware: the image's key is enrolled on the VM's first boot (docs/trust.md).
exec .venv/bin/weft vm run --secure-boot --image "$image" "$@"
