#!/usr/bin/env python3
"""Install the right torch build into this Python environment (scripts/setup.sh runs it in .venv).

A machine without a GPU (no working `nvidia-smi`) gets a CPU build, never the nvidia CUDA packages
(several GB): on PyPI, `torch==2.13.0` for Linux x86_64 is the CUDA build. Sources are tried in
this order, each checked first with `pip install --dry-run --report` (metadata only):

1. the torch already installed, when it is the pinned version (constraints.txt) and brings no
   CUDA packages;
2. whatever pip's own configuration resolves (a local wheel through find-links / PIP_FIND_LINKS,
   a mirror, ...), when that build needs no CUDA packages;
3. PyTorch's CPU wheel index, https://download.pytorch.org/whl/cpu, where it is reachable.

A resolution that would pull nvidia-* / cuda-* packages is refused; when no source is left, the
script stops with the fix. A machine with a GPU gets what pip resolves (PyTorch's CUDA build on
PyPI). Standard library only: it runs before anything else is installed.

Environment:
  NESTAR_TORCH_INDEX=URL   take torch from this index instead (e.g. https://download.pytorch.org/whl/cu126)
  NESTAR_ALLOW_CUDA=1      accept CUDA packages on a machine without a GPU
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import unquote

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CUDA_PREFIXES = ("nvidia-", "cuda-")
ROOT = Path(__file__).resolve().parents[1]


def has_gpu() -> bool:
    """An NVIDIA GPU that the driver sees (`nvidia-smi -L` lists one)."""
    if not shutil.which("nvidia-smi"):
        return False
    try:
        r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and "GPU" in r.stdout


def pinned_torch(constraints: Path) -> str:
    """The torch requirement of constraints.txt, e.g. 'torch==2.13.0' (plain 'torch' when unpinned)."""
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if re.match(r"torch\s*[=<>!~]", line):
            return line.replace(" ", "")
    return "torch"


def _marker_applies(marker: str) -> bool:
    """Evaluate a requirement's environment marker here; unknown (no packaging module): assume it applies."""
    try:
        from packaging.markers import Marker
    except ImportError:
        try:
            from pip._vendor.packaging.markers import Marker
        except ImportError:
            return True
    try:
        return Marker(marker).evaluate({"extra": ""})
    except Exception:  # noqa: BLE001 -- an unreadable marker: be conservative
        return True


def cuda_packages(report: dict) -> list[str]:
    """CUDA packages a `pip install --report` resolution would bring: those it installs (a full
    resolution) and those torch requires on this machine (a --no-deps resolution)."""
    found = set()
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        name = meta.get("name", "").lower()
        if name.startswith(CUDA_PREFIXES):
            found.add(name)
        if name != "torch":
            continue
        for req in meta.get("requires_dist") or []:
            spec, _, marker = req.partition(";")
            dep = re.match(r"[A-Za-z0-9._-]+", spec.strip()).group(0).lower()
            if dep.startswith(CUDA_PREFIXES) and (not marker.strip() or _marker_applies(marker.strip())):
                found.add(dep)
    return sorted(found)


def torch_item(report: dict) -> Optional[dict]:
    return next((i for i in report.get("install", []) if i.get("metadata", {}).get("name", "").lower() == "torch"), None)


def describe(item: dict) -> str:
    """'torch 2.13.0+cpu from local wheel /opt/wheels/...' or '... from https://download.pytorch.org'."""
    url = item.get("download_info", {}).get("url", "")
    where = f"local wheel {unquote(url[len('file://'):])}" if url.startswith("file://") else re.sub(r"(https?://[^/]+).*", r"\1", url)
    return f"torch {item['metadata']['version']} from {where or 'an unknown source'}"


def dry_run(requirement: str, pip_args: list[str], constraints: Optional[Path], no_deps: bool = True,
            timeout: int = 600) -> tuple[Optional[dict], str]:
    """(report, '') of `pip install --dry-run` for a fresh install of `requirement`, or (None, pip's error)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
               "--disable-pip-version-check", "--retries", "2", "--report", str(out), *pip_args, requirement]
        cmd += ["--no-deps"] if no_deps else []
        cmd += ["-c", str(constraints)] if constraints else []
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, f"pip timed out after {timeout}s"
        if r.returncode != 0 or not out.is_file():
            return None, _pip_error(r.stderr)
        return json.loads(out.read_text()), ""


def _pip_error(stderr: str) -> str:
    """The gist of pip's failure: an unreachable index, or its last ERROR line."""
    if re.search(r"NewConnectionError|Failed to establish|Name or service not known|name resolution|timed out", stderr):
        return "index unreachable"
    errors = [line for line in stderr.splitlines() if line.startswith("ERROR")]
    return (errors or stderr.strip().splitlines() or ["pip failed"])[-1]


Resolver = Callable[[list[str]], tuple[Optional[dict], str]]


def choose(gpu: bool, candidates: list[tuple[str, list[str]]], resolve: Resolver,
           allow_cuda: bool = False) -> tuple[Optional[list[str]], list[str]]:
    """(pip args of the first acceptable source or None, what was tried and why it was passed over)."""
    tried = []
    for label, args in candidates:
        report, error = resolve(args)
        item = torch_item(report) if report else None
        if item is None:
            tried.append(f"{label}: no torch ({error or 'not found'})")
            continue
        cuda = cuda_packages(report)
        if cuda and not gpu and not allow_cuda:
            tried.append(f"{label}: {describe(item)}, which pulls CUDA packages ({', '.join(cuda[:4])}, ...)")
            continue
        tried.append(f"{label}: {describe(item)}" + (f" with {len(cuda)} CUDA packages" if cuda else ", a CPU build"))
        return args, tried
    return None, tried


def installed() -> tuple[Optional[str], list[str]]:
    """(installed torch version or None, installed CUDA packages) of this environment."""
    from importlib import metadata

    names = sorted({(d.metadata["Name"] or "").lower() for d in metadata.distributions()})
    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        version = None
    return version, [n for n in names if n.startswith(CUDA_PREFIXES)]


def refusal(requirement: str, tried: list[str]) -> str:
    return "\n".join([
        f"[setup] refused: this machine has no NVIDIA GPU, and no source offers a CPU build of {requirement} "
        f"without CUDA packages:", *(f"[setup]   {t}" for t in tried),
        "[setup] fix, one of:",
        f"[setup]   let pip reach PyTorch's CPU index ({CPU_INDEX}) and run setup again;",
        f"[setup]   or download the CPU wheel (pip download --no-deps '{requirement}' --index-url {CPU_INDEX} -d DIR "
        f"on a machine that can) and run: PIP_FIND_LINKS=DIR bash scripts/setup.sh;",
        "[setup]   or, to install the CUDA build anyway (several GB): NESTAR_ALLOW_CUDA=1 bash scripts/setup.sh",
    ])


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--constraints", default=str(ROOT / "constraints.txt"), help="file that pins torch")
    p.add_argument("--check", action="store_true", help="resolve and report only; install nothing")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--assume-gpu", action="store_true", help="act as on a machine with a GPU")
    g.add_argument("--assume-cpu", action="store_true", help="act as on a machine without a GPU")
    args = p.parse_args(argv)

    constraints = Path(args.constraints)
    requirement = pinned_torch(constraints)
    gpu = args.assume_gpu or (not args.assume_cpu and has_gpu())
    allow_cuda = os.environ.get("NESTAR_ALLOW_CUDA") == "1"
    print(f"[setup] {'NVIDIA GPU found' if gpu else 'no NVIDIA GPU (nvidia-smi)'}: "
          f"{'the CUDA build' if gpu else 'a CPU build'} of {requirement}")
    version, cuda_now = installed()
    pin = requirement.split("==", 1)[1] if "==" in requirement else None
    if version and (pin is None or version.split("+")[0] == pin) and not os.environ.get("NESTAR_TORCH_INDEX"):
        if gpu or not cuda_now:
            print(f"[setup] torch {version} already installed: kept")
            return 0
        print(f"[setup] warning: this environment already holds torch {version} with {len(cuda_now)} CUDA packages "
              f"on a machine without a GPU; for a CPU build: rm -rf .venv && bash scripts/setup.sh")
        return 0
    if os.environ.get("NESTAR_TORCH_INDEX"):
        candidates = [(f"NESTAR_TORCH_INDEX={os.environ['NESTAR_TORCH_INDEX']}",
                       ["--index-url", os.environ["NESTAR_TORCH_INDEX"]])]
        allow_cuda = True  # an explicit choice
    else:
        candidates = [("pip's configured sources", [])]
        if not gpu:
            candidates.append(("PyTorch's CPU index", ["--index-url", CPU_INDEX]))
    chosen, tried = choose(gpu, candidates, lambda a: dry_run(requirement, a, constraints), allow_cuda)
    for line in tried:
        print(f"[setup] resolved {line}")
    if chosen is None:
        print(refusal(requirement, tried), file=sys.stderr)
        return 3
    if gpu and "+cpu" in tried[-1]:
        print("[setup] note: pip resolves a CPU build on this GPU machine; for CUDA: "
              "NESTAR_TORCH_INDEX=https://download.pytorch.org/whl/cu126 bash scripts/setup.sh")
    if args.check:
        return 0
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *chosen,
           "-c", str(constraints), requirement]
    if subprocess.run(cmd).returncode != 0:
        print(f"[setup] error: {' '.join(cmd)} failed", file=sys.stderr)
        return 1
    _, cuda_now = installed()
    if cuda_now and not gpu and not allow_cuda:  # a dependency pulled them in after all
        print(f"[setup] error: the install brought CUDA packages ({', '.join(cuda_now[:4])}, ...) onto a machine "
              f"without a GPU; remove .venv and see the fix above", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
