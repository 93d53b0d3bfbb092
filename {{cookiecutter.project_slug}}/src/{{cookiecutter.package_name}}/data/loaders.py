"""Serving batches from data already decoded into one tensor.

``DeviceBatches`` indexes each batch from the tensor on the training device with one
operation: no worker processes, no host-to-device copies. It serves CPU training, and GPU
training whenever the data fits in GPU memory (usually). Otherwise ``InMemoryDataset`` feeds
a standard DataLoader from pinned host memory.
"""
from __future__ import annotations

import torch
from torch import Tensor


class InMemoryDataset(torch.utils.data.Dataset):
    """Examples (and labels) held in one tensor. ``__getitems__`` lets the DataLoader fetch a
    whole batch with one indexing operation instead of stacking examples one by one."""

    def __init__(self, data: Tensor, labels: Tensor | None):
        self.data, self.labels = data, labels

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]):
        index = torch.as_tensor(indices)
        return self.data.index_select(0, index), None if self.labels is None else self.labels[index]


def keep_batch(batch):
    """The batch is already assembled by ``__getitems__``."""
    return batch


class DeviceBatches:
    """Shuffled batches from tensors on the training device. With several processes each takes
    its own share of every epoch's permutation (as DistributedSampler would)."""

    def __init__(self, data: Tensor, labels: Tensor | None, batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0):
        self.data, self.labels, self.batch_size = data, labels, batch_size
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0

    def __len__(self) -> int:
        return len(self.data) // self.world_size // self.batch_size

    def __iter__(self):
        generator = torch.Generator(device=self.data.device).manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.data), device=self.data.device, generator=generator)
        order = order[self.rank::self.world_size]
        for k in range(len(self)):
            index = order[k * self.batch_size:(k + 1) * self.batch_size]
            yield self.data.index_select(0, index), None if self.labels is None else self.labels[index]
