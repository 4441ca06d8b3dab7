#!/usr/bin/env bash
# The project's test command: set up, build the test-profile OS image, then run every test
# layer (unit, host integration and the VM tests in tests/vm, which boot that image).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
echo "test: building the test image (incremental after the first build)"
.venv/bin/weft image build --profile test
# Releases 2 and 3 of the test image, the update sources of tests/vm/test_updates.py (3's app
# daemon never starts: the rollback test). Incremental builds: they differ only in version.
echo "test: building releases 2 and 3 of the test image for the update tests"
.venv/bin/weft image build --profile test --image-version 2 --out mkosi.output/test-v2
.venv/bin/weft image build --profile test --image-version 3 --out mkosi.output/test-v3 \
    --extra-tree tests/vm/releases/broken-appd
.venv/bin/python -m pytest -q -ra "$@"
