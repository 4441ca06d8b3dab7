#!/usr/bin/env bash
# The project's test command: set up, build the test-profile OS image, then run every test
# layer (unit, host integration and the VM tests in tests/vm, which boot that image).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
echo "test: building the test image (incremental after the first build)"
.venv/bin/weft image build --profile test
.venv/bin/python -m pytest -q -ra "$@"
