#!/usr/bin/env bash
# The project's test command: set up, then run every test layer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
.venv/bin/python -m pytest -q -ra "$@"
