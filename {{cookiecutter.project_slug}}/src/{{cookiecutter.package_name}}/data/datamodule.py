"""The Lightning data module: load a source once into memory, split it, serve batches."""
from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .images import DataError, load_digits, load_image_folder, load_torchvision, TORCHVISION_SETS
from .toy import make_toy2d


class InMemoryDataset(torch.utils.data.Dataset):
    """Samples (and labels) held in one tensor. ``__getitems__`` lets the DataLoader fetch a
    whole batch with one indexing operation instead of stacking examples one by one."""

    def __init__(self, data: Tensor, labels: Tensor | None):
        self.data, self.labels = data, labels

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]):
        index = torch.as_tensor(indices)
        return self.data[index], None if self.labels is None else self.labels[index]


def keep_batch(batch):
    """The batch is already assembled by ``__getitems__``."""
    return batch


def load_source(cfg, seed: int) -> tuple[Tensor, Tensor | None, list[str]]:
    """Data, labels (or None) and class names for the configured source."""
    if cfg.name == "toy2d":
        points, labels = make_toy2d(cfg.toy_shape, cfg.toy_samples, seed)
        return points, labels, [] if labels is None else [str(i) for i in range(int(labels.max()) + 1)]
    if cfg.name == "digits":
        return load_digits(cfg.image_size, cfg.channels)
    if cfg.name == "image_folder":
        return load_image_folder(cfg.root, cfg.image_size, cfg.channels, cfg.labels_from_subfolders)
    if cfg.name in TORCHVISION_SETS:
        return load_torchvision(cfg.name, cfg.root, cfg.image_size, cfg.channels)
    raise DataError(f"unknown data.name '{cfg.name}'")


class DiffusionDataModule(L.LightningDataModule):
    def __init__(self, cfg, seed: int = 0):
        super().__init__()
        self.cfg, self.seed = cfg, seed
        self.train_set = self.val_set = None
        self.class_names: list[str] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        data, labels, self.class_names = load_source(self.cfg, self.seed)
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(self.seed))
        n_val = round(self.cfg.val_fraction * len(data))
        if len(data) - n_val < 1:
            raise DataError(f"only {len(data)} examples: too few to train on")
        split = {"val": order[:n_val], "train": order[n_val:]}
        subset = {k: InMemoryDataset(data[i], None if labels is None else labels[i]) for k, i in split.items()}
        self.train_set, self.val_set = subset["train"], subset["val"]

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.train_set.data.shape[1:])

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) or None

    def train_dataloader(self) -> DataLoader:
        batch_size = min(self.cfg.batch_size, len(self.train_set))
        return DataLoader(self.train_set, batch_size=batch_size, shuffle=True, drop_last=True,
                          collate_fn=keep_batch, num_workers=self.cfg.num_workers,
                          persistent_workers=self.cfg.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.cfg.batch_size, collate_fn=keep_batch)
