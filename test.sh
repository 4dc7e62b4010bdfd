#!/usr/bin/env bash
# The whole test suite: unit (no root), packet (BPF_PROG_TEST_RUN) and end-to-end
# (network namespaces) tests. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
