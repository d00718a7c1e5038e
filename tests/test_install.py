"""scripts/install_torch.py (run by setup.sh): CPU machines never get the CUDA packages.

The decision logic runs on recorded pip reports; the real resolutions (PyTorch's CPU index, PyPI)
run where those indexes are reachable and are skipped cleanly offline."""
from __future__ import annotations

import importlib.util
import platform
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("install_torch", ROOT / "scripts" / "install_torch.py")
it = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(it)

PIN = it.pinned_torch(ROOT / "constraints.txt")


def report(version: str, url: str, requires: list[str] = (), extra: list[str] = ()) -> dict:
    """A `pip install --report` as pip writes it (only the fields the script reads)."""
    torch = {"metadata": {"name": "torch", "version": version, "requires_dist": list(requires)},
             "download_info": {"url": url}}
    return {"install": [torch] + [{"metadata": {"name": n, "version": "1"}} for n in extra]}


CUDA_REPORT = report("2.13.0", "https://files.pythonhosted.org/packages/torch-2.13.0-cp311-linux.whl",
                     ['nvidia-cublas==13.1; python_version >= "3"', "filelock", 'nvidia-nope==1; python_version < "3"'])
CPU_REPORT = report("2.13.0+cpu", "file:///opt/wheels/torch-2.13.0%2Bcpu-cp311.whl", ["filelock", "sympy>=1.13"])


def test_pin_comes_from_constraints():
    assert PIN.startswith("torch==")


def test_cuda_packages_read_from_resolution_and_from_torchs_requirements():
    assert it.cuda_packages(CUDA_REPORT) == ["nvidia-cublas"]  # the marker that does not apply is left out
    assert it.cuda_packages(CPU_REPORT) == []
    assert it.cuda_packages(report("2.13.0", "x", extra=["nvidia-cudnn-cu13", "cuda-bindings", "triton"])) == [
        "cuda-bindings", "nvidia-cudnn-cu13"]
    assert it.describe(it.torch_item(CPU_REPORT)) == "torch 2.13.0+cpu from local wheel /opt/wheels/torch-2.13.0+cpu-cp311.whl"


def test_cpu_machine_passes_over_a_cuda_build_and_refuses_when_nothing_else_is_left():
    results = {"configured": (CUDA_REPORT, ""), "cpu-index": (CPU_REPORT, "")}
    candidates = [("configured", []), ("cpu-index", ["--index-url", it.CPU_INDEX])]
    resolve = lambda args: results["cpu-index" if args else "configured"]  # noqa: E731
    chosen, tried = it.choose(False, candidates, resolve)
    assert chosen == ["--index-url", it.CPU_INDEX] and "pulls CUDA packages (nvidia-cublas" in tried[0]
    assert it.choose(True, candidates, resolve)[0] == []  # a GPU machine takes pip's CUDA build
    results["cpu-index"] = (None, "index unreachable")
    chosen, tried = it.choose(False, candidates, resolve)
    assert chosen is None and "index unreachable" in tried[1]
    assert it.choose(False, candidates, resolve, allow_cuda=True)[0] == []  # NESTAR_ALLOW_CUDA=1
    fix = it.refusal(PIN, tried)
    assert it.CPU_INDEX in fix and "PIP_FIND_LINKS=DIR" in fix and "NESTAR_ALLOW_CUDA=1" in fix


# ----- real resolutions, where the index is reachable ---------------------------------------------
def reachable(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=5).close()
        return True
    except OSError:
        return False


def test_pytorch_cpu_index_resolves_a_cpu_build():
    if not reachable("download.pytorch.org"):
        pytest.skip("download.pytorch.org is not reachable from here")
    rep, err = it.dry_run(PIN, ["--isolated", "--index-url", it.CPU_INDEX], ROOT / "constraints.txt", timeout=300)
    assert rep is not None, err
    assert "+cpu" in it.torch_item(rep)["metadata"]["version"] and it.cuda_packages(rep) == []


@pytest.mark.skipif(sys.platform != "linux" or platform.machine() != "x86_64", reason="PyPI's CUDA build is Linux x86_64")
def test_pypi_torch_pulls_cuda_packages_and_a_cpu_machine_refuses_it():
    """The issue's finding, checked against the live index: what setup.sh must never install on a CPU."""
    if not reachable("pypi.org"):
        pytest.skip("pypi.org is not reachable from here")
    resolve = lambda args: it.dry_run(PIN, ["--isolated", *args], ROOT / "constraints.txt", timeout=300)  # noqa: E731
    rep, err = resolve([])
    if rep is None and "unreachable" in err:
        pytest.skip(f"PyPI: {err}")
    assert rep is not None, err
    assert any(n.startswith("nvidia-") for n in it.cuda_packages(rep))
    chosen, tried = it.choose(False, [("PyPI", [])], lambda args: (rep, ""))
    assert chosen is None and "pulls CUDA packages" in tried[0]
