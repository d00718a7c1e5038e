#!/usr/bin/env bash
# The README's second command (and CI's): set up, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# The optional extras too, so their tests run (nestar[hub], nestar[tensorboard]: ~25 MB of wheels).
NESTAR_EXTRAS="${NESTAR_EXTRAS:-test,hub,tensorboard}" bash scripts/setup.sh
# Some tests start 2 torchrun processes of 2 threads on 2 cores: with OpenMP's default spin-waiting
# an oversubscribed CPU runs up to 10x slower; passive waiting gives the same results.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec .venv/bin/python -m pytest -q "$@"
