"""Per-sample random streams, so augmentation does not depend on which worker process draws
a sample, nor on how long that worker has been running.

:class:`SeededSampler` runs in the main process and pairs every index with a seed derived from
the run's seed and the epoch; :class:`SeededDataset` seeds torch's generator with it just for
that sample. A training run then draws the same crops and
flips with 0 or 8 DataLoader workers, persistent or not, and a resumed run continues exactly
as the uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["SeededDataset", "SeededSampler"]


class SeededSampler(Sampler):
    """``(index, seed)`` for each index of ``sampler`` (a random or weighted sampler, whose
    order is drawn too): both come from a generator seeded with ``seed`` and the epoch, which
    Lightning sets through :meth:`set_epoch` before each epoch. Nothing depends on how much of
    the global random stream other code (DataLoader workers' start-up) has used."""

    def __init__(self, sampler: Sampler, seed: int, start_epoch: int = 0) -> None:
        self.sampler = sampler
        self.seed = int(seed)
        self.epoch = 0
        # A resumed run starts its first epoch's iterator before Lightning calls set_epoch.
        self.start_epoch = int(start_epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = max(self.epoch, self.start_epoch)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(epoch))
        if hasattr(self.sampler, "generator"):
            self.sampler.generator = generator
        indices = list(self.sampler)
        seeds = torch.randint(0, 2**62, (len(indices),), generator=generator).tolist()
        return iter(list(zip(indices, seeds, strict=True)))


class SeededDataset(Dataset):
    """Items of ``dataset`` fetched by ``(index, seed)`` under that seed."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]
