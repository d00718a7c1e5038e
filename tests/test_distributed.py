"""Distributed training and sampling with torchrun: 2 CPU processes (gloo), `nestar-tiny`, a few steps.

Equivalence design: the training randomness of every micro-batch (flow time t, noise, label dropout)
is seeded from (seed, step, global micro-batch index = rank * grad_accum + j) and the data order is
global, so 2 processes x 1 micro-batch and 1 process x 2 micro-batches of the same global batch draw
exactly the same numbers for the same images; their parameters differ only by floating-point
summation order (DDP averages two gradients, one process accumulates two halves). Same world size
and same launch => bitwise equal (resume test).

The torchrun runs use `nestar train` itself on the full Fashion-MNIST train split (skipped if the
dataset is not installed), with `--train.device=cpu`, fp32 and a constant LR.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nestar.config import apply_overrides
from nestar.data import DatasetMissingError, build_dataset
from nestar.pipeline import Pipeline
from nestar.registry import build_model, get_preset
from nestar.serialization import CheckpointError, read_checkpoint_info, save_pretrained
from nestar.training import Trainer
from nestar.training import distributed as D
from nestar.training.data_order import StepBatchSampler
from nestar.training.trainer import _MicroBatchSampler

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")

TRAIN = ["--train.device=cpu", "--train.steps=4", "--train.batch_size=8", "--train.precision=fp32",
         "--train.lr_schedule=constant", "--train.log_every=1", "--train.ckpt_every=0", "--train.sample_every=0"]
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RUN_ID")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def torchrun(args: list[str], nproc: int = 2, timeout: int = 120, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", *args]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}"
    return r


def train(run_dir: Path, *extra: str, nproc: int = 2, check: bool = True) -> subprocess.CompletedProcess:
    args = ["-m", "nestar.cli.main", "train", "--preset=nestar-tiny", f"--run-dir={run_dir}", "--quiet", *TRAIN, *extra]
    if nproc == 0:  # plain single process, no torchrun
        r = subprocess.run([sys.executable, *args], env=_env(), capture_output=True, text=True, timeout=120)
        if check:
            assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}"
        return r
    return torchrun(args, nproc=nproc, check=check)


def ckpt(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / "last.safetensors"))


def log_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_close_weights(a: dict, b: dict, prefixes=("model.", "ema."), atol: float = 2e-5) -> None:
    keys = [k for k in a if k.startswith(prefixes)]
    assert keys and set(keys) == {k for k in b if k.startswith(prefixes)}
    worst = max((a[k] - b[k]).abs().max().item() for k in keys)
    assert worst <= atol, f"max |diff| {worst} > {atol}"


def assert_equal_weights(a: dict, b: dict) -> None:
    keys = [k for k in a if k.startswith(("model.", "ema.", "optim."))]
    assert keys and set(keys) == {k for k in b if k.startswith(("model.", "ema.", "optim."))}
    assert [k for k in keys if not torch.equal(a[k], b[k])] == []


@pytest.fixture(scope="module")
def fmnist_full():
    try:
        return build_dataset(get_preset("nestar-tiny").data, "train")
    except DatasetMissingError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def ddp_runs(fmnist_full, tmp_path_factory):
    """2 processes x 4 steps straight (`a`), and 2 processes stopped at step 2 (`b2`, kept as a copy)."""
    root = tmp_path_factory.mktemp("ddp")
    train(root / "a")
    train(root / "b", "--max-steps=2")
    shutil.copytree(root / "b", root / "b2")
    return root


# ----- DDP through `nestar train` under torchrun -----------------------------------------------------
def test_two_processes_equal_one_process_same_global_batch(ddp_runs, fmnist_full, tmp_path):
    a = ddp_runs / "a"
    info = read_checkpoint_info(a / "checkpoints" / "last.safetensors")
    assert info["step"] == 4 and info["world_size"] == 2 and info["grad_accum"] == 1
    assert sorted(p.name for p in a.iterdir()) == ["checkpoints", "config.json", "log.csv", "model"]  # rank 0 only
    rows = log_rows(a)
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]

    # One process, one micro-batch per former rank: the same samples and random draws per micro-batch.
    cfg = apply_overrides(get_preset("nestar-tiny"), [t[2:] for t in TRAIN] + ["train.grad_accum=2"])
    single = Trainer(cfg, tmp_path / "single", progress=False, dataset=fmnist_full)
    assert single.dist.world_size == 1 and not single.dist.enabled
    single.fit()
    assert_close_weights(ckpt(a), ckpt(tmp_path / "single"))
    for r, s in zip(rows, log_rows(tmp_path / "single")):
        assert float(r["loss"]) == pytest.approx(float(s["loss"]), rel=1e-4, abs=1e-5)

    # Without the micro-batch split the random draws differ: the same test would fail.
    cfg1 = apply_overrides(cfg, ["train.grad_accum=1"])
    other = Trainer(cfg1, tmp_path / "other", progress=False, dataset=fmnist_full)
    other.fit(max_steps=1)
    assert float(log_rows(tmp_path / "other")[0]["loss"]) != pytest.approx(float(rows[0]["loss"]), rel=1e-4)


def test_two_process_resume_is_exact(ddp_runs):
    b = ddp_runs / "b"
    assert read_checkpoint_info(b / "checkpoints" / "last.safetensors")["step"] == 2
    r = train(b)  # resumes 2 -> 4
    assert "trained 4 steps on 2 processes" in r.stdout
    assert_equal_weights(ckpt(ddp_runs / "a"), ckpt(b))
    assert [x["loss"] for x in log_rows(b)] == [x["loss"] for x in log_rows(ddp_runs / "a")]


def test_world_size_change_is_refused_or_exact(ddp_runs, fmnist_full, tmp_path):
    src = ddp_runs / "b2"
    run = tmp_path / "run"
    shutil.copytree(src, run)
    path = run / "checkpoints" / "last.safetensors"
    before, cfg_json = path.read_bytes(), (run / "config.json").read_text()
    base = apply_overrides(get_preset("nestar-tiny"), [t[2:] for t in TRAIN])

    with pytest.raises(CheckpointError) as e:  # 2 processes x 1 -> 1 process x 1
        Trainer(base, run, progress=False, dataset=fmnist_full)
    msg = str(e.value)
    assert "written by 2 process(es)" in msg and "this run has 1" in msg and "--train.grad_accum=2" in msg
    assert "allow_world_size_change" in msg
    assert path.read_bytes() == before and (run / "config.json").read_text() == cfg_json  # nothing overwritten

    with pytest.raises(CheckpointError, match="global batch"):  # another global batch: refused even when allowed
        Trainer(apply_overrides(base, ["train.batch_size=16", "train.allow_world_size_change=True"]), run,
                progress=False, dataset=fmnist_full)

    # 1 process x 2 micro-batches = the same micro-batches as 2 x 1: allowed and exact up to float rounding.
    t = Trainer(apply_overrides(base, ["train.grad_accum=2"]), run, progress=False, dataset=fmnist_full)
    assert t.step == 2
    t.fit()
    assert_close_weights(ckpt(ddp_runs / "a"), ckpt(run))
    assert read_checkpoint_info(path)["world_size"] == 1

    # Explicitly allowed: continues with the same data order (other random draws).
    run2 = tmp_path / "run2"
    shutil.copytree(src, run2)
    t2 = Trainer(apply_overrides(base, ["train.allow_world_size_change=True"]), run2, progress=False, dataset=fmnist_full)
    assert t2.step == 2 and t2.fit().steps == 4


def test_fsdp_on_cpu(ddp_runs, tmp_path):
    """FSDP2 (fully_shard) with gloo: same result as DDP, and it resumes a DDP checkpoint (one file format)."""
    r = train(tmp_path / "f", "--train.parallel=fsdp", check=False)
    if r.returncode != 0:
        assert "fully_shard failed" in r.stderr + r.stdout, r.stderr[-4000:]
        pytest.skip("fully_shard does not run on CPU/gloo with this torch: a clear error was given")
    a = ckpt(ddp_runs / "a")
    assert_close_weights(a, ckpt(tmp_path / "f"))
    # Stopped at step 2 and resumed under FSDP: bit-exact with the straight FSDP run (issue 14, item 8).
    train(tmp_path / "g", "--train.parallel=fsdp", "--max-steps=2")
    train(tmp_path / "g", "--train.parallel=fsdp")
    assert_equal_weights(ckpt(tmp_path / "f"), ckpt(tmp_path / "g"))
    run = tmp_path / "from_ddp"
    shutil.copytree(ddp_runs / "b2", run)
    train(run, "--train.parallel=fsdp")  # 2 -> 4 from the DDP checkpoint (model, EMA and AdamW state)
    got = ckpt(run)
    assert_close_weights(a, got, prefixes=("model.", "ema.", "optim."))


def test_fsdp_bf16_mixed_precision_matches_ddp_autocast(fmnist_full, tmp_path):
    """bf16 block weights (MixedPrecisionPolicy) + autocast under FSDP = bf16 autocast under DDP, with
    activation checkpointing and gradient accumulation (no reduce-scatter on the first micro-batch)."""
    extra = ["--train.precision=bf16", "--train.steps=3", "--model.depth=2", "--train.grad_accum=2"]
    train(tmp_path / "ddp", *extra)
    r = train(tmp_path / "fsdp", *extra, "--train.parallel=fsdp", "--train.activation_checkpointing=True", check=False)
    if r.returncode != 0 and "fully_shard failed" in r.stderr + r.stdout:
        pytest.skip("fully_shard does not run on CPU/gloo with this torch")
    assert r.returncode == 0, r.stderr[-4000:]
    d, f = ckpt(tmp_path / "ddp"), ckpt(tmp_path / "fsdp")
    assert all(v.dtype == torch.float32 for k, v in f.items() if k.startswith("model."))  # fp32 master weights
    assert_close_weights(d, f, atol=1e-5)
    assert [float(x["loss"]) for x in log_rows(tmp_path / "ddp")] == pytest.approx(
        [float(x["loss"]) for x in log_rows(tmp_path / "fsdp")], rel=1e-5)


# ----- distributed sampling ---------------------------------------------------------------------------
SAMPLE_WORKER = """
import json, sys
import torch
from safetensors.torch import save_file
from nestar.pipeline import Pipeline
from nestar.training.distributed import distributed_sample, exit_without_teardown, init_distributed, shutdown_distributed

env = init_distributed("cpu")
pipe = Pipeline.from_pretrained(sys.argv[1])
labels = torch.tensor(json.loads(sys.argv[2]))
out = distributed_sample(pipe, labels, seed=5, chunk_size=4, num_steps=3, guidance_scale=2.0)
if env.rank == 0:
    save_file({"images": out.contiguous()}, sys.argv[3])
else:
    assert out is None
# as `nestar train` ends: all ranks leave together, then skip the interpreter's gloo teardown (rank 1
# aborted now and then, 'terminate called without an active exception', when it left alone)
shutdown_distributed(sync=True)
exit_without_teardown(0)
"""


def test_distributed_sample_matches_single_process(tmp_path):
    cfg = get_preset("nestar-tiny")
    torch.manual_seed(0)
    model = build_model(cfg)
    save_pretrained(tmp_path / "model", model, cfg)
    labels = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9]  # 4 chunks of <= 4: rank 0 gets chunks 0, 2; rank 1 gets 1, 3
    (tmp_path / "worker.py").write_text(SAMPLE_WORKER)
    torchrun([str(tmp_path / "worker.py"), str(tmp_path / "model"), json.dumps(labels), str(tmp_path / "out.safetensors")])
    gathered = load_file(str(tmp_path / "out.safetensors"))["images"]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers ran with OMP_NUM_THREADS=1
    try:
        pipe = Pipeline.from_pretrained(tmp_path / "model")
        ref = D.distributed_sample(pipe, labels, seed=5, chunk_size=4, num_steps=3, guidance_scale=2.0)  # no process group
        by_chunk = torch.cat([pipe(torch.tensor(labels[i:i + 4]), num_steps=3, guidance_scale=2.0, batch_size=4,
                                   generator=torch.Generator().manual_seed(D.chunk_seed(5, i // 4))).images
                              for i in range(0, len(labels), 4)])
    finally:
        torch.set_num_threads(threads)
    assert gathered.shape == (13, 1, 32, 32)
    torch.testing.assert_close(gathered, ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(ref, by_chunk, atol=0, rtol=0)
    u8 = D.distributed_sample(pipe, labels[:3], seed=5, chunk_size=4, num_steps=3, guidance_scale=2.0, as_uint8=True)
    assert u8.dtype == torch.uint8 and u8.shape == (3, 1, 32, 32)


def test_eval_under_torchrun_matches_single_process(tmp_path, fake_inception):
    """`nestar eval` under torchrun: each rank samples its chunks, rank 0 scores them; same images as 1 process."""
    import numpy as np

    cfg = get_preset("nestar-tiny")
    torch.manual_seed(0)
    save_pretrained(tmp_path / "model", build_model(cfg), cfg)
    common = ["-m", "nestar.cli.main", "eval", "--checkpoint", str(tmp_path / "model"), "--num-samples", "20",
              "--batch-size", "4", "--num-steps", "3", "--extractor", fake_inception, "--no-classifier",
              "--ref-max-images", "64", "--kid-subsets", "5", "--quiet"]
    torchrun(common + ["--out", str(tmp_path / "two.json"), "--npz-out", str(tmp_path / "two.npz")])
    r = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one.json"), "--npz-out", str(tmp_path / "one.npz")],
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-4000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert (one["sampling"]["world_size"], two["sampling"]["world_size"]) == (1, 2)
    assert one["num_samples"] == two["num_samples"] == 20
    with np.load(tmp_path / "one.npz") as a, np.load(tmp_path / "two.npz") as b:
        assert np.abs(a["arr_0"].astype(int) - b["arr_0"].astype(int)).max() <= 1  # uint8 rounding of ~1e-6
        assert np.array_equal(a["arr_1"], b["arr_1"])
    assert two["metrics"]["fid"] == pytest.approx(one["metrics"]["fid"], rel=1e-3, abs=1e-3)


# ----- pieces, in one process ---------------------------------------------------------------------------
def test_micro_batches_cover_the_global_batch_in_order():
    """Global micro-batch g = rank * grad_accum + j covers the same items for any world_size x grad_accum."""
    def layout(world: int, accum: int, steps: int = 3) -> list[list[int]]:
        out = [[None] * (world * accum) for _ in range(steps)]
        for rank in range(world):
            it = iter(_MicroBatchSampler(StepBatchSampler(40, 8, seed=1, rank=rank, world_size=world), accum))
            for s in range(steps):
                for j in range(accum):
                    out[s][rank * accum + j] = next(it)
        return out

    assert layout(2, 1) == layout(1, 2)
    assert layout(4, 1) == layout(2, 2) == layout(1, 4)
    assert [sum(mb, []) for mb in layout(1, 1)] == [sum(mb, []) for mb in layout(2, 2)]


def test_seeds_are_mixed_and_stable():
    assert D.mix_seed(0, 0, 0) == D.mix_seed(0, 0, 0)
    seeds = {D.micro_batch_seed(s, step, g) for s in range(3) for step in range(50) for g in range(8)}
    assert len(seeds) == 3 * 50 * 8 and all(0 <= x < 2**63 for x in seeds)
    assert D.chunk_seed(0, 1) != D.micro_batch_seed(0, 0, 1)


def test_world_size_policy():
    ok = dict(world_size=2, grad_accum=1, batch_size=8, allow=False)
    assert D.check_world_size("c", {"world_size": 2, "grad_accum": 4, "batch_size": 8}, **ok) is None
    assert "exactly" in D.check_world_size("c", {"world_size": 1, "grad_accum": 2, "batch_size": 8}, **ok)
    with pytest.raises(CheckpointError, match="refused by default"):
        D.check_world_size("c", {"world_size": 4, "grad_accum": 1, "batch_size": 8}, **ok)
    assert "differ" in D.check_world_size("c", {"world_size": 4, "grad_accum": 1, "batch_size": 8}, **{**ok, "allow": True})
    with pytest.raises(CheckpointError, match="global batch"):
        D.check_world_size("c", {"world_size": 4, "grad_accum": 1, "batch_size": 16}, **{**ok, "allow": True})
    assert D.check_world_size("c", {}, **{**ok, "world_size": 1}) is None  # old checkpoints: 1 process


def test_grad_accum_config_and_single_process(tiny_cfg, fmnist_small, tmp_path):
    from nestar.config import ConfigError

    with pytest.raises(ConfigError, match="grad_accum"):
        apply_overrides(tiny_cfg, ["train.grad_accum=3"])  # 8 is not divisible by 3
    with pytest.raises(ConfigError, match="parallel"):
        apply_overrides(tiny_cfg, ["train.parallel=zero3"])
    cfg = apply_overrides(tiny_cfg, ["train.steps=2", "train.grad_accum=4"])
    res = Trainer(cfg, tmp_path, progress=False, dataset=fmnist_small).fit()
    assert res.steps == 2 and torch.isfinite(torch.tensor(res.final_loss))
    assert read_checkpoint_info(res.checkpoint)["grad_accum"] == 4


def test_activation_checkpointing_same_gradients(tiny_cfg):
    cfg = apply_overrides(tiny_cfg, ["model.depth=2"])
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = {"tokens": torch.randn(4, 64, 16), "labels": torch.tensor([0, 1, 2, 3])}

    def grads() -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        model.loss(batch)["loss"].backward()
        return [p.grad.clone() for p in model.parameters()]

    ref = grads()
    assert D.apply_activation_checkpointing(model) == 2 * model.num_modules + cfg.model.head.depth
    keys = set(model.state_dict())
    got = grads()
    assert set(model.state_dict()) == keys  # checkpoint-compatible names
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_token_datasets_skip_the_tokenizer(tiny_cfg, fmnist_small, tmp_path):
    """Float (L, C) items (a latent cache) are tokens: the same run as encoding the images each step."""
    from nestar.data import TensorImageDataset, to_float
    from nestar.tokenizers import build_tokenizer

    tok = build_tokenizer(tiny_cfg.tokenizer, tiny_cfg.data.image_size, tiny_cfg.data.channels)
    tokens = tok.encode(to_float(fmnist_small.images))
    assert tokens.ndim == 3 and tokens.dtype == torch.float32
    cfg = apply_overrides(tiny_cfg, ["train.steps=3"])
    a = Trainer(cfg, tmp_path / "a", progress=False, dataset=fmnist_small)
    a.fit()
    b = Trainer(cfg, tmp_path / "b", progress=False, dataset=TensorImageDataset(tokens, fmnist_small.labels))
    b.fit()
    for x, y in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(x, y)
