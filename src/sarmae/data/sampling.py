"""Training order that a run can stop and resume anywhere: each epoch's order and each sample's augmentation are
functions of (seed, epoch, position), never of the process's global random state.

A plain shuffled DataLoader draws its order from the global RNG when an epoch's iterator is made, and the random
augmentations of each image draw from whatever state the training step left behind (or from a worker's own
stream). Both depend on the whole history of the process, so a run resumed in the middle of an epoch could not
see the batches an uninterrupted run would have seen. Here :class:`EpochOrder` computes the epoch's permutation
from ``(seed, epoch)`` and hands every index a seed of its own; :class:`SeededSamples` loads each item under that
seed (whether in the training process or a loader worker), and ``EpochOrder.resume_at`` drops the batches a
stopped run already trained. The model's own random draws (MAE masks, drop-path) stay on the global RNG, which
the checkpoint saves and restores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: spreads consecutive seeds / epochs far apart


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of ``epoch``'s permutation (and of its samples' seeds)."""
    return (int(seed) * _MIX + int(epoch) + 1) % (1 << 63)


def sample_seed(seed: int, epoch: int, rank: int, k: int) -> int:
    """The augmentation seed of the ``k``-th sample that ``rank`` trains on in ``epoch``; image files
    (:class:`EpochOrder`) and packed shards (:class:`~sarmae.data.shards.PackedImages`) follow the same rule."""
    return (epoch_seed(seed, epoch) * 1_000_003 + (int(rank) << 40) + int(k)) % (1 << 63)


def _world() -> tuple[int, int]:
    """(rank, world size) of the running process group, (0, 1) outside DDP."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochOrder(DistributedSampler):
    """This rank's ``(sample_seed, index)`` pairs of one epoch, in an order fixed by ``(seed, epoch)``; the k-th
    pair's seed is :func:`sample_seed` ``(seed, epoch, rank, k)``.

    Under DDP each of ``world`` ranks takes every ``world``-th position of the permutation, padded by repetition
    to equal shares (as ``DistributedSampler``). The rank and world size are read when an epoch starts, so the
    loader can be made before the DDP processes exist. It subclasses ``DistributedSampler`` only so that
    Lightning keeps it as it is rather than replacing it with its own (it keeps every ``DistributedSampler``).
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:  # noqa: D107 (no super().__init__:
        self.size, self.seed, self.shuffle = int(size), int(seed), bool(shuffle)  # it needs a process group)
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, positions to drop)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, samples_done: int = 0) -> None:
        """Continue a stopped run: ``epoch`` next (Lightning may make the epoch's iterator before it sets the
        epoch), leaving out the first ``samples_done`` positions of this rank's share of it."""
        self.epoch = int(epoch)
        self._skip = (int(epoch), int(samples_done))

    def __len__(self) -> int:
        return math.ceil(self.size / _world()[1])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rank, world = _world()
        if self.shuffle:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        share = math.ceil(self.size / world)
        order = (order * math.ceil(share * world / max(1, self.size)))[: share * world]  # equal shares: repeat
        mine = order[rank::world]
        start = 0
        if self._skip is not None and self._skip[0] == self.epoch:
            start, self._skip = min(self._skip[1], share), None
        for k in range(start, share):
            yield sample_seed(self.seed, self.epoch, rank, k), mine[k]


class SeededSamples(Dataset):
    """``dataset[index]`` computed under ``torch.manual_seed(sample_seed)`` for a key ``(sample_seed, index)``.

    The global RNG is forked around the item, so loading never consumes the training process's random stream.
    Other attributes are read through to the wrapped dataset.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        sample_seed, index = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed)  # the CPU generator only (manual_seed seeds CUDA too)
            return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not yet set (e.g. while unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def resumable_loader(dataset: Any, batch_size: int, *, seed: int, shuffle: bool, workers: int,
                     collate_fn: Callable, drop_last: bool = False) -> DataLoader:
    """A training DataLoader over ``dataset`` in :class:`EpochOrder`; ``loader.sampler.resume_at`` resumes it."""
    return DataLoader(
        SeededSamples(dataset),
        batch_size=batch_size,
        sampler=EpochOrder(len(dataset), seed, shuffle),
        num_workers=workers,
        collate_fn=collate_fn,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,  # the order comes from the sampler, in this process: workers hold no state
        generator=torch.Generator().manual_seed(int(seed)),  # the loader's own worker seeds: off the global RNG
    )


__all__ = ["EpochOrder", "SeededSamples", "epoch_seed", "resumable_loader", "sample_seed"]
