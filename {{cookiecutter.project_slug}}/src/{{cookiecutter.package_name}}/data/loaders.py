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
    """Examples (and labels) held in one tensor; for reflow's pairs (``pairs.py``) also the noise
    each example is paired with. ``__getitems__`` lets the DataLoader fetch a whole batch with
    one indexing operation instead of stacking examples one by one."""

    def __init__(self, data: Tensor, labels: Tensor | None, noise: Tensor | None = None):
        self.data, self.labels, self.noise = data, labels, noise

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]):
        return batch_of(torch.as_tensor(indices), self.data, self.labels, self.noise)


def batch_of(index: Tensor, data: Tensor, labels: Tensor | None, noise: Tensor | None = None) -> tuple:
    """Examples number ``index``: (data, labels), labels None for data without them, and for
    paired data (data, labels, noise)."""
    batch = (data.index_select(0, index), None if labels is None else labels[index])
    return batch if noise is None else (*batch, noise.index_select(0, index))


def keep_batch(batch):
    """The batch is already assembled by ``__getitems__``."""
    return batch


class DeviceBatches:
    """Shuffled batches from tensors on the training device. With several processes each takes
    its own share of every epoch's permutation (as DistributedSampler would).

    Epoch e is served in the order of a permutation seeded with seed + e. The position (epoch
    and batch) is kept in ``state_dict``, which Lightning saves in every checkpoint and gives
    back on resume, so a resumed run continues with the very batch where it stopped."""

    def __init__(self, data: Tensor, labels: Tensor | None, batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, noise: Tensor | None = None):
        self.data, self.labels, self.noise, self.batch_size = data, labels, noise, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch, self.position = 0, 0        # the next batch served is batch `position` of `epoch`

    def __len__(self) -> int:
        return len(self.data) // self.world_size // self.batch_size

    def __iter__(self):
        generator = torch.Generator(device=self.data.device).manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.data), device=self.data.device, generator=generator)
        order = order[self.rank::self.world_size]
        while self.position < len(self):
            index = order[self.position * self.batch_size:(self.position + 1) * self.batch_size]
            self.position += 1
            yield batch_of(index, self.data, self.labels, self.noise)
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        if self.position == len(self):                      # the epoch is served: the next one is due
            return {"epoch": self.epoch + 1, "position": 0}
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


class PriorBatches:
    """Each batch of ``examples`` (``DeviceBatches``) followed by as many of ``prior``'s, served
    round and round: DreamBooth's batches, half the subject's images and half the class images
    that keep the class as the base drew it (Ruiz et al. 2023). Both keep their place through a
    checkpoint."""

    def __init__(self, examples: DeviceBatches, prior: DeviceBatches):
        self.examples, self.prior = examples, prior
        self.prior_batches = None

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self):
        for batch in self.examples:
            yield tuple(torch.cat([ours, theirs]) for ours, theirs in zip(batch, self.next_prior()))

    def next_prior(self) -> tuple:
        if self.prior_batches is not None:
            batch = next(self.prior_batches, None)
            if batch is not None:
                return batch
        self.prior_batches = iter(self.prior)         # the next epoch of the class images
        return next(self.prior_batches)

    def state_dict(self) -> dict:
        return {"examples": self.examples.state_dict(), "prior": self.prior.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.examples.load_state_dict(state["examples"])
        self.prior.load_state_dict(state["prior"])
        self.prior_batches = None
