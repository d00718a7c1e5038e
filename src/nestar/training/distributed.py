"""Distributed training and sampling: torchrun process groups, DDP / FSDP2 wrapping, seeds, gathering.

`nestar train` runs unchanged under `torchrun --nproc_per_node=N -m nestar.cli.main train ...`: the
Trainer calls `init_distributed`, which reads RANK / WORLD_SIZE / LOCAL_RANK from the environment and
starts a process group (nccl for CUDA devices, gloo for CPU; the device of a CUDA rank is
cuda:LOCAL_RANK). Without those variables everything stays a plain single process (no process group).

Conventions (see docs/scaling.md):
- the global batch is `train.batch_size`; rank r takes its contiguous share of each step's batch
  (`StepBatchSampler(..., rank, world_size)`), split again into `train.grad_accum` micro-batches. The
  data order is global: a function of (seed, step) only.
- training randomness (flow time t, noise, label dropout, prefix noise, random dataset draws) is
  re-seeded before every micro-batch from `mix_seed(seed, step, g)`, g = rank * grad_accum + j being
  the micro-batch's global index. Every rank therefore draws from its own stream, and a run is a
  function of (seed, global batch, world_size * grad_accum): 2 processes x 1 micro-batch give the
  same update as 1 process x 2 micro-batches (up to floating-point summation order).
- only rank 0 prints, logs, writes sample grids and checkpoints; FSDP state is gathered to it first.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from nestar.utils.device import check_device, parse_device

_MASK64 = (1 << 64) - 1


# ----- environment ------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: rank, world size, its device and the backend (None: no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None

    @property
    def enabled(self) -> bool:
        """True when a process group exists (torchrun), even with world_size 1."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def device_for_rank(name: str, local_rank: int = 0, field: str = "--train.device") -> torch.device:
    """'auto' -> cuda:LOCAL_RANK if CUDA is available, else cpu; 'cuda' -> cuda:LOCAL_RANK; else as given."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return check_device(torch.device("cuda", local_rank), field)
    return parse_device(name, field)


def init_distributed(
    device: str = "auto", timeout_minutes: float = 30.0, field: str = "--train.device"
) -> DistEnv:
    """Join (or start) the default process group when launched by torchrun; otherwise a single process.

    The backend follows the device: nccl on CUDA, gloo on CPU. Idempotent: an existing process group
    is reused. The long default timeout leaves rank 0 time to write large checkpoints.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_available() and dist.is_initialized():
        dev = device_for_rank(device, local_rank, field)
        return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev, dist.get_backend())
    if not launched_by_torchrun():
        return DistEnv(device=device_for_rank(device, 0, field))
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; cannot run under torchrun")
    dev = device_for_rank(device, local_rank, field)
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices are visible; "
                f"use --nproc_per_node <= the number of GPUs per node"
            )
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend,
        timeout=datetime.timedelta(minutes=timeout_minutes),
        device_id=dev if dev.type == "cuda" else None,
    )
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev, backend)


def shutdown_distributed(sync: bool = False) -> None:
    """Destroy the default process group if one exists (call once at the end of a torchrun program).

    `sync=True` (the normal end, never after an error: the peers might not come) first meets every
    rank at a barrier, so all ranks tear down together. Without it a rank that finished early
    destroys its gloo connections while rank 0 is still busy; one CI run saw that rank abort
    ('terminate called without an active exception', SIGABRT) after the results were written."""
    if dist.is_available() and dist.is_initialized():
        if sync and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def exit_without_teardown(code: int) -> None:
    """End a torchrun worker whose group is destroyed and whose files are written: `os._exit(code)`.

    A worker still aborted now and then in the interpreter's teardown of gloo ('terminate called
    without an active exception', about 1 run in 40 on 2 busy cores), which torchrun reports as a
    failed job; `nestar train` and `nestar eval` leave this way instead."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def barrier(env: DistEnv) -> None:
    if env.enabled:
        if env.backend == "nccl":
            dist.barrier(device_ids=[env.device.index])
        else:
            dist.barrier()


def all_reduce_mean(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean over ranks (in place on a copy on the communication device); identity without a process group."""
    if not env.enabled:
        return t
    comm = t.detach().to(env.device if env.backend == "nccl" else "cpu", torch.float64).clone()
    dist.all_reduce(comm)
    return (comm / env.world_size).to(t.device, t.dtype)


def all_agree(flag: bool, env: DistEnv) -> tuple[bool, bool]:
    """(all ranks True, any rank True) for a local boolean."""
    if not env.enabled:
        return flag, flag
    t = torch.tensor(
        [float(flag), float(flag)], device=env.device if env.backend == "nccl" else "cpu"
    )
    lo, hi = t[:1].clone(), t[1:].clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(lo.item()), bool(hi.item())


# ----- seeds --------------------------------------------------------------------------------------
def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*values: int) -> int:
    """A well-mixed non-negative 63-bit seed from integers (e.g. (seed, step, micro-batch index))."""
    h = 0x6A09E667F3BCC908
    for v in values:
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h >> 1


def micro_batch_seed(seed: int, step: int, global_micro: int) -> int:
    """Seed of the training randomness of micro-batch `global_micro` (= rank * grad_accum + j) at `step`."""
    return mix_seed(seed, step, global_micro)


def chunk_seed(seed: int, chunk: int) -> int:
    """Seed of chunk `chunk` in `distributed_sample` (independent of the number of processes)."""
    return mix_seed(seed, 0x5A3, chunk)


# ----- model wrapping -----------------------------------------------------------------------------
class LossModule(nn.Module):
    """`forward(batch) = model.loss(batch)`: DDP and FSDP hook `forward`, so the loss goes through it.

    Its parameter names are the model's with a `model.` prefix.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> dict:
        return self.model.loss(batch)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The units of FSDP sharding and compilation: the backbone blocks the model names."""
    return model.shard_units()


def checkpoint_units(model: nn.Module) -> list[nn.Module]:
    """Units of activation checkpointing: the backbone's and the head's blocks, as the model names them.

    The per-token heads run on (tokens x head batch multiplier) rows, so at ImageNet scale their
    activations outweigh the transformers' (docs/scaling.md).
    """
    return model.checkpoint_units()


class _CheckpointedForward:
    """Mixin: recompute the block's activations in backward (non-reentrant) while training with grad."""

    def forward(self, *args, **kwargs):
        if self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(
                super().forward, *args, use_reentrant=False, **kwargs
            )
        return super().forward(*args, **kwargs)


_CKPT_CLASSES: dict[type, type] = {}


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Turn on activation checkpointing for every `checkpoint_units` block (class swap: state-dict keys,
    parameters and FSDP wrapping are unchanged). Returns the number of blocks.

    Only training forward passes with grad are recomputed; inference and eval mode are unaffected.
    """
    blocks = checkpoint_units(model)
    for blk in blocks:
        cls = type(blk)
        if issubclass(cls, _CheckpointedForward):
            continue
        if cls not in _CKPT_CLASSES:
            _CKPT_CLASSES[cls] = type(
                f"Checkpointed{cls.__name__}", (_CheckpointedForward, cls), {}
            )
        blk.__class__ = _CKPT_CLASSES[cls]
    return len(blocks)


def compile_blocks(model: nn.Module) -> int:
    """`torch.compile` each transformer block in place (the shapes inside a block are static per module)."""
    blocks = transformer_blocks(model)
    for blk in blocks:
        blk.compile()
    return len(blocks)


def wrap_ddp(root: nn.Module, env: DistEnv) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    import inspect

    # No buffer sync at each forward: the models' buffers are constant index tables.
    kw = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        else {"broadcast_buffers": False}
    )
    return DistributedDataParallel(
        root, device_ids=[env.device.index] if env.device.type == "cuda" else None, **kw
    )


class FSDPUnavailableError(RuntimeError):
    """fully_shard does not work on this device/backend with this torch build."""


def shard_fsdp(root: nn.Module, model: nn.Module, env: DistEnv, bf16: bool) -> nn.Module:
    """FSDP2: `fully_shard` each transformer block of `model`, then `root` (which holds the rest).

    With bf16 the blocks use `MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32,
    cast_forward_inputs=False)`: their linear weights are all-gathered and used in bfloat16 (half the
    all-gather traffic and memory; autocast would cast them to bf16 anyway) and gradients are
    reduce-scattered in float32. The LayerNorms of each block form their own small float32 group
    (not resharded after forward), and so does the root (embeddings, output projections, the flow
    head: the parameters outside the blocks). With the Trainer's bf16 autocast the numerics are then
    those of DDP + autocast: float32 residual stream, norms, head inputs and flow-matching targets.
    (With bf16 LayerNorm weights, CPU autocast fails on fp32 inputs -- it does not upcast layer_norm
    -- and casting the block inputs to bf16 instead would make the residual stream bfloat16.)
    Sharded master weights and AdamW states are float32 in every case. Parameters become DTensors
    sharded on dim 0.
    """
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError as e:  # pragma: no cover - torch < 2.6
        raise FSDPUnavailableError(
            f"train.parallel='fsdp' needs torch.distributed.fsdp.fully_shard ({e})"
        ) from e
    fp32 = MixedPrecisionPolicy(reduce_dtype=torch.float32, cast_forward_inputs=False)
    blocks_mp = (
        MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False
        )
        if bf16
        else fp32
    )
    try:
        mesh = init_device_mesh(env.device.type, (env.world_size,))
        for blk in transformer_blocks(model):
            if bf16:
                for norm in [
                    m for m in blk.modules() if isinstance(m, nn.LayerNorm) and m.elementwise_affine
                ]:
                    fully_shard(norm, mesh=mesh, mp_policy=fp32, reshard_after_forward=False)
            fully_shard(blk, mesh=mesh, mp_policy=blocks_mp)
        fully_shard(root, mesh=mesh, mp_policy=fp32)
    except Exception as e:
        raise FSDPUnavailableError(
            f"fully_shard failed on device {env.device} with backend {env.backend} ({type(e).__name__}: {e}). "
            f"Use --train.parallel=ddp here; FSDP is meant for CUDA/nccl."
        ) from e
    return root


def is_fsdp(module: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return False
    return isinstance(module, FSDPModule)


@contextlib.contextmanager
def grad_sync(train_module: nn.Module, sync: bool) -> Iterator[None]:
    """DDP: skip the gradient all-reduce on micro-batches before the last one of a step (`no_sync`).

    FSDP reduce-scatters after every micro-batch and accumulates the sharded gradients: skipping it
    would keep full-size unsharded gradients between micro-batches, i.e. give up FSDP's memory saving
    for a little less communication.
    """
    if not sync and not is_fsdp(train_module) and hasattr(train_module, "no_sync"):  # DDP
        with train_module.no_sync():
            yield
    else:
        yield


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor, or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The full value of a DTensor (collective), or the tensor itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def param_fqns(root: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names (in `root`) of the optimizer's parameters in state-dict index order."""
    names = {id(p): n for n, p in root.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def indexed_param_groups(optimizer: torch.optim.Optimizer) -> list[dict]:
    """`optimizer.state_dict()['param_groups']` without touching the state (params as indices)."""
    out, i = [], 0
    for g in optimizer.param_groups:
        n = len(g["params"])
        out.append(
            {**{k: v for k, v in g.items() if k != "params"}, "params": list(range(i, i + n))}
        )
        i += n
    return out


def gather_fsdp_state(root: LossModule, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full model and optimizer state dicts of a sharded run, on CPU, on rank 0 (empty on other ranks).

    Collective: every rank must call it. The model state has the model's own keys (no `model.`
    prefix); the optimizer state is index-based like `optimizer.state_dict()`, so the checkpoint
    file is the same as a single-process one.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(root, options=opts)
    osd = get_optimizer_state_dict(root, optimizer, options=opts)
    if not msd:  # not rank 0
        return {}, {}
    model_sd = {k[len("model.") :]: v for k, v in msd.items()}
    fqns = param_fqns(root, optimizer)
    state = {i: osd["state"][f] for i, f in enumerate(fqns) if f in osd.get("state", {})}
    return model_sd, {"state": state, "param_groups": indexed_param_groups(optimizer)}


def load_sharded_optimizer(optimizer: torch.optim.Optimizer, full_state: dict) -> None:
    """Load an index-based full optimizer state into an optimizer over FSDP (DTensor) parameters.

    Every rank holds the full tensors (read from the checkpoint file); each keeps its own shard, no
    communication. Scalars such as AdamW's `step` stay plain tensors.
    """
    from torch.distributed.tensor import distribute_tensor

    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = {}
    for idx, st in full_state["state"].items():
        p = params[int(idx)]
        state[int(idx)] = {
            k: (
                distribute_tensor(
                    v.to(p.device, p.dtype), p.device_mesh, p.placements, src_data_rank=None
                )
                if hasattr(p, "device_mesh") and torch.is_tensor(v) and v.shape == p.shape
                else v
            )
            for k, v in st.items()
        }
    optimizer.load_state_dict({"state": state, "param_groups": full_state["param_groups"]})


class ShardedEMA:
    """EMA of an FSDP model kept as local shards (same layout as the parameters), no communication per step.

    `gather_into(module)` (collective) writes the full averaged weights into a plain module.
    """

    def __init__(self, sharded_model: nn.Module, ema_full: nn.Module):
        from torch.distributed.tensor import distribute_tensor

        self.params = list(sharded_model.parameters())
        full = list(ema_full.parameters())
        if len(full) != len(self.params):
            raise ValueError(f"EMA has {len(full)} parameters but the model {len(self.params)}")
        self.local = []
        for p, e in zip(self.params, full):
            if hasattr(p, "device_mesh"):
                d = distribute_tensor(
                    e.detach().to(p.device, p.dtype),
                    p.device_mesh,
                    p.placements,
                    src_data_rank=None,
                )
                self.local.append(d.to_local().clone())
            else:
                self.local.append(e.detach().to(p.device).clone())

    @torch.no_grad()
    def update(self, step: int, decay: float) -> float:
        from nestar.training.ema import ema_decay_at

        d = ema_decay_at(step, decay)
        torch._foreach_lerp_(self.local, [local_tensor(p.detach()) for p in self.params], 1.0 - d)
        return d

    @torch.no_grad()
    def gather_into(self, ema_full: nn.Module, buffers_from: Optional[nn.Module] = None) -> None:
        from torch.distributed.tensor import DTensor

        for p, loc, e in zip(self.params, self.local, ema_full.parameters()):
            if hasattr(p, "device_mesh"):
                d = DTensor.from_local(
                    loc,
                    p.device_mesh,
                    p.placements,
                    run_check=False,
                    shape=p.shape,
                    stride=p.stride(),
                )
                e.copy_(d.full_tensor())
            else:
                e.copy_(loc)
        if buffers_from is not None:
            for eb, b in zip(ema_full.buffers(), buffers_from.buffers()):
                eb.copy_(full_tensor(b))


# ----- resuming with another world size -----------------------------------------------------------
def check_world_size(
    path, saved: dict, *, world_size: int, grad_accum: int, batch_size: int, allow: bool
) -> Optional[str]:
    """Decide whether a checkpoint written with another world size may be resumed.

    `saved`: {'world_size', 'grad_accum', 'batch_size'} of the checkpoint. Returns None (same world
    size) or a notice; raises CheckpointError when refused:
    - same global batch and same world_size * grad_accum: allowed, an exact continuation (the
      micro-batches and their seeds are the same; only the float summation order differs);
    - same global batch otherwise: refused unless `allow` (train.allow_world_size_change=True);
      then it continues with the same data order but other per-micro-batch random draws;
    - different global batch: refused.
    """
    from nestar.serialization import CheckpointError

    sw, sa, sb = (
        int(saved.get("world_size", 1)),
        int(saved.get("grad_accum", 1)),
        int(saved.get("batch_size", batch_size)),
    )
    if sw == world_size:
        return None
    was = f"{path} was written by {sw} process(es) (grad_accum={sa}, global batch {sb})"
    now = f"this run has {world_size} (grad_accum={grad_accum}, global batch {batch_size})"
    if sb != batch_size:
        raise CheckpointError(
            f"{was}; {now}. Changing both the number of processes and the global batch on "
            f"resume is refused: keep --train.batch_size={sb}."
        )
    if sw * sa == world_size * grad_accum:
        return f"{was}; {now}: same micro-batches, continuing exactly."
    if allow:
        return (
            f"{was}; {now}: continuing (train.allow_world_size_change=True) with the same data order; "
            f"the per-micro-batch random draws differ from an uninterrupted run."
        )
    hint = ""
    if (sw * sa) % world_size == 0 and batch_size % (sw * sa) == 0:
        hint = f" --train.grad_accum={sw * sa // world_size} gives an exact continuation;"
    raise CheckpointError(
        f"{was}; {now}. Resuming with another number of processes is refused by default "
        f"(nothing was changed).{hint} or pass --train.allow_world_size_change=True to continue "
        f"with the same global batch and data order but different random draws."
    )


# ----- distributed sampling -----------------------------------------------------------------------
def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def distributed_sample(
    pipeline,
    labels,
    *,
    seed: int = 0,
    chunk_size: int = 64,
    dst: int = 0,
    as_uint8: bool = False,
    progress: bool = False,
    **sample_kwargs,
) -> Optional[torch.Tensor]:
    """Sample images for `labels` on all ranks of the default process group; rank `dst` gets them in order.

    `labels` is cut into chunks of `chunk_size`; chunk c is sampled in one batch with a generator
    seeded `chunk_seed(seed, c)`, on whichever rank holds it, so the images depend only on (seed,
    chunk_size, labels, sampling settings), not on the number of processes. Rank r samples chunks
    r, r + W, r + 2W, ...; each round is gathered to `dst` and moved to CPU there (other ranks get
    None). Without a process group this is the single-process reference. `sample_kwargs` (cfg,
    cfg_schedule, temperature, num_steps) go to the pipeline; `as_uint8` returns uint8 [0, 255]
    images (4x less memory for large evaluations). `progress`: a bar over the rounds on rank `dst`.
    Every rank must call it with the same arguments.
    """
    from tqdm import tqdm

    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if labels.numel() == 0:
        raise ValueError("labels is empty: pass at least one class id")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chunks = labels.split(chunk_size)
    post = _to_uint8 if as_uint8 else (lambda x: x)

    def sample(c: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(chunk_seed(seed, c))
        return pipeline(chunks[c], generator=gen, batch_size=chunk_size, **sample_kwargs).images

    enabled = dist.is_available() and dist.is_initialized()
    if not enabled or dist.get_world_size() == 1:
        rounds = tqdm(range(len(chunks)), desc="sampling", disable=not progress, dynamic_ncols=True)
        return torch.cat([post(sample(c)).cpu() for c in rounds])
    rank, world = dist.get_rank(), dist.get_world_size()
    comm = pipeline.device if dist.get_backend() == "nccl" else torch.device("cpu")
    cfg = pipeline.config.data
    shape = (chunk_size, cfg.channels, cfg.image_size, cfg.image_size)
    out = []
    rounds = range(0, len(chunks), world)
    for first in tqdm(
        rounds,
        desc=f"sampling ({world} ranks)",
        disable=not (progress and rank == dst),
        dynamic_ncols=True,
    ):
        c = first + rank
        buf = torch.zeros(shape, device=comm)
        if c < len(chunks):
            img = sample(c)
            buf[: img.shape[0]] = img.to(comm, torch.float32)
        bufs = [torch.empty_like(buf) for _ in range(world)] if rank == dst else None
        dist.gather(buf, bufs, dst=dst)
        if rank == dst:
            for i, b in enumerate(bufs):
                if first + i < len(chunks):
                    out.append(post(b[: len(chunks[first + i])]).cpu())
    return torch.cat(out) if rank == dst else None


__all__ = [
    "DistEnv",
    "FSDPUnavailableError",
    "LossModule",
    "ShardedEMA",
    "all_reduce_mean",
    "apply_activation_checkpointing",
    "barrier",
    "check_world_size",
    "checkpoint_units",
    "chunk_seed",
    "compile_blocks",
    "device_for_rank",
    "distributed_sample",
    "gather_fsdp_state",
    "init_distributed",
    "launched_by_torchrun",
    "load_sharded_optimizer",
    "micro_batch_seed",
    "mix_seed",
    "shard_fsdp",
    "shutdown_distributed",
    "exit_without_teardown",
    "transformer_blocks",
    "wrap_ddp",
]
