#!/usr/bin/env bash
# The README's first command: set up, then train a small NestAR on Fashion-MNIST, sample, print metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/nestar demo "$@"
