#!/usr/bin/env bash
# Set up nestar on a fresh machine: the Fashion-MNIST Debian package (when we can install it) and a
# virtual environment in .venv with torch pinned by constraints.txt. Machines without an NVIDIA GPU
# get a CPU build of torch, never the CUDA packages: scripts/install_torch.py picks the source
# (already installed / pip's configured sources such as a local wheel / PyTorch's CPU index),
# checks it with a dry-run resolution and refuses, with the fix, when only a CUDA build is at hand.
set -euo pipefail
cd "$(dirname "$0")/.."

FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ] && [ -z "${NESTAR_FASHION_MNIST_DIR:-}" ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo -n"
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    echo "[setup] installing dataset-fashion-mnist with apt-get"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
      || echo "[setup] warning: could not install dataset-fashion-mnist (run: sudo apt-get install -y dataset-fashion-mnist)"
  else
    echo "[setup] Fashion-MNIST missing; install it with: sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
# torch first (the build that fits this machine), then the package; constraints.txt pins torch==2.13.0
# for every install command here, so the second one keeps the torch the first one chose.
# NESTAR_EXTRAS: the extras to install (scripts/test.sh adds hub and tensorboard, whose tests would
# otherwise skip).
.venv/bin/python scripts/install_torch.py
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[${NESTAR_EXTRAS:-test}]"
.venv/bin/python - <<'PYEOF'
import sys, torch
want = "2.13.0"
if torch.__version__.split("+")[0] != want:
    sys.exit(f"[setup] torch {torch.__version__} installed but {want} is pinned (constraints.txt)")
build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"
print(f"[setup] torch {torch.__version__} ({build}; torch.version.cuda = {torch.version.cuda})")
from nestar.utils.precision import cpu_description, resolve_precision
print(f"[setup] ok: torch {torch.__version__}, {torch.get_num_threads()} threads on {cpu_description()}")
print(f"[setup] precision=auto on this CPU -> {resolve_precision('auto', 'cpu').describe()}")
PYEOF
