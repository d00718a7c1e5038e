"""Resumable data order: the batch at step s is a pure function of (seed, s).

Each epoch is a permutation drawn from a generator seeded with (seed, epoch); step s takes the
s-th slice of the concatenated epochs (the last incomplete batch of an epoch is dropped). A
resumed run therefore sees exactly the batches it would have seen without the interruption.
With `world_size` > 1 each rank takes its contiguous share of the global batch.
"""

from __future__ import annotations

from typing import Iterator

import torch


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    def __init__(
        self,
        num_items: int,
        global_batch: int,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if global_batch > num_items:
            raise ValueError(
                f"batch size {global_batch} is larger than the dataset ({num_items} items)"
            )
        if global_batch % world_size:
            raise ValueError(
                f"global batch {global_batch} is not divisible by world size {world_size}"
            )
        self.n, self.batch, self.seed, self.start = num_items, global_batch, seed, start_step
        self.rank, self.world = rank, world_size
        self.per_epoch = num_items // global_batch
        self._epoch, self._perm = -1, None

    def indices(self, step: int) -> list[int]:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        local = self.batch // self.world
        lo = i * self.batch + self.rank * local
        return self._perm[lo : lo + local].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while True:
            yield self.indices(step)
            step += 1

    def __len__(self) -> int:  # infinite in practice; DataLoader only needs it for len()
        return 2**62
