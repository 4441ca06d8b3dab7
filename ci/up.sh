#!/usr/bin/env bash
# The main job, from a fresh clone: install what is missing, build the OS image and boot it
# (serial console on this terminal; Ctrl-A x quits). Extra arguments go to `weft vm run`,
# e.g. `bash ci/up.sh --display gtk` or `--snapshot`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
.venv/bin/weft image build --out mkosi.output/default
exec .venv/bin/weft vm run --image mkosi.output/default/weft.raw "$@"
