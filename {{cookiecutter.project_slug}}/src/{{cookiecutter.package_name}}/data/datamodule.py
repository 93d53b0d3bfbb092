"""The Lightning data module: decode (or load from the cache) once, split, serve batches, and
augment them on the training device."""
from __future__ import annotations

import warnings

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..errors import DataError
from ..kinds import steps_first_doubt
from ..pixels import to_uint8, to_unit_range
from ..sets import rotated, without_centre
from .augment import center_crop, random_crop, random_flip
from .cache import cached_tensors, fingerprint_key
from .clusters import cluster_labels
from .loaders import DeviceBatches, InMemoryDataset, PriorBatches, keep_batch
from .sources import load_source, report_bad_files

SPLIT_KEYS = ("val_fraction", "train_size", "train_part")     # what chooses the training examples
SPLIT_SEED = 0     # the split ignores the seed: runs that differ only in their seed train on the same examples
LARGEST = 1e6      # float values beyond this are refused: far outside the scale that the noise levels assume


def value_problem(data: Tensor, sets: bool = False) -> str | None:
    """What makes float data unusable for training, or None: NaN or Inf values (but for
    ``sets``, whose missing points are whole rows of NaN, ``sets.py``), or values so large
    that the noise levels (and k-means' squared distances) mean nothing to them."""
    if not data.is_floating_point():
        return None
    if sets and data.ndim == 3:
        data = torch.where(torch.isnan(data).all(-1, keepdim=True), 0.0, data)     # missing points
    flat = data.flatten(1)
    bad = (~torch.isfinite(flat)).any(1).nonzero().flatten()
    if len(bad):
        sets_hint = "; for sets with missing points (a mask) set data.kind=set" if data.ndim == 3 and not sets else ""
        return (f"{len(bad)} example(s) hold NaN or Inf values (the first: index {bad[0].item()}); remove or fix "
                f"them{sets_hint}")
    largest = flat.abs().max().item() if flat.numel() else 0.0
    if largest > LARGEST:
        return (f"values reach {largest:.3g}: scale the data to about unit size (the noise levels and the networks "
                "assume a standard deviation near diffusion.sigma_data)")
    return None


def layout_doubt(data: Tensor, kind: str) -> str | None:
    """A warning for float sequences with more channels than steps (``steps_first_doubt``)."""
    sequences = data.ndim == 3 and data.is_floating_point() and kind != "set"
    doubt = steps_first_doubt(*data.shape[1:]) if sequences else None
    return f"{doubt}, or for sets of points set data.kind=set" if doubt else None


def check_trainable(data: Tensor, cfg) -> None:
    """Values the network can learn from (``value_problem``), and images at least as large as
    the square that training crops from them."""
    problem = value_problem(data, sets=cfg.kind == "set")
    if problem:
        raise DataError(problem)
    if cfg.kind == "set" and (data.ndim != 3 or not data.is_floating_point()):
        raise DataError(f"data.kind=set needs float data of shape (N, P, D), P points of D numbers each; the data "
                        f"is {data.dtype} of shape {tuple(data.shape)}")
    if (cfg.zero_com or cfg.rotate) and cfg.kind != "set":
        raise DataError("data.zero_com and data.rotate act on sets of points: set data.kind=set (data of shape "
                        "(N, P, D)), or turn them off")
    if data.dtype == torch.uint8 and data.ndim == 4:
        height, width = data.shape[-2:]
        if height != width or height < cfg.image_size:
            raise DataError(f"the images are {height}x{width}, but training crops squares of data.image_size="
                            f"{cfg.image_size} from them: store square images at least that large, or set "
                            f"data.image_size={min(height, width)} (for square images)")


class DiffusionDataModule(L.LightningDataModule):
    def __init__(self, cfg, seed: int = 0):
        super().__init__()
        self.cfg, self.seed = cfg, seed
        self.train_set = self.val_set = None
        self.class_names: list[str] = []
        self.cluster_sizes: list[int] | None = None     # examples per cluster, when data.clusters labels them
        self.fingerprint = ""                          # of the training examples: caches of their statistics use it
        self.prior: InMemoryDataset | None = None          # DreamBooth's class images (``add_prior``)
        self.images: dict[str, InMemoryDataset] = {}       # a latent model's images, by split (``encode``)
        self.conditioned = False        # whether the examples' labels are vector conditions (N, K)
        self.scaling = None             # a tensor file's FeatureRange (``scale_with``)

    @classmethod
    def of_run(cls, cfg) -> DiffusionDataModule:
        """The data that the configuration ``cfg`` (a run's) names, set up."""
        data = cls(cfg.data, cfg.seed)
        data.setup()
        return data

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        decoded = load_source(self.cfg, self.seed)
        report_bad_files(decoded, self.cfg)
        check_trainable(decoded.data, self.cfg)
        doubt = layout_doubt(decoded.data, self.cfg.kind)
        if doubt:
            warnings.warn(doubt, stacklevel=2)
        data, labels = decoded.data, decoded.labels
        self.class_names = decoded.class_names
        if decoded.conditions is not None:          # conditions take the labels' place
            if labels is not None:
                print(f"note: {self.cfg.root} holds labels and conditions: the model is conditioned on the conditions")
            labels, self.class_names, self.conditioned = decoded.conditions, [], True
        if self.cfg.zero_com:
            data = without_centre(data)
        if self.cfg.clusters and not self.conditioned and self.cfg.kind == "set":
            raise DataError(f"data.clusters={self.cfg.clusters} labels examples by k-means on their numbers, which "
                            "means nothing for sets (the order of their points is arbitrary): set data.clusters=0")
        if self.cfg.clusters and not self.conditioned:     # self-guidance: the data's own clusters as labels
            labels, self.class_names = cluster_labels(data, self.cfg.clusters, self.seed)
            self.cluster_sizes = torch.bincount(labels, minlength=len(self.class_names)).tolist()
        split = self.split(len(data))
        subset = {k: InMemoryDataset(data[i], None if labels is None else labels[i]) for k, i in split.items()}
        self.train_set, self.val_set = subset["train"], subset["val"]
        self.fingerprint = fingerprint_key({"data": decoded.fingerprint,
                                            **{key: getattr(self.cfg, key) for key in SPLIT_KEYS}})

    def split(self, n: int) -> dict[str, Tensor]:
        """The indices of the validation and training examples among ``n``: a random share
        data.val_fraction held out, and the training examples, or with data.train_size only
        part number data.train_part of that size among the rest (parts never overlap). The same
        for every seed, so that two runs can differ in their seed and nothing else."""
        order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
        n_val = round(self.cfg.val_fraction * n)
        if n - n_val < 1:
            raise DataError(f"only {n} examples: too few to train on")
        train = order[n_val:]
        size, part = self.cfg.train_size, self.cfg.train_part
        if size:
            if (part + 1) * size > len(train):
                raise DataError(f"data.train_size={size} data.train_part={part} needs {(part + 1) * size} training "
                                f"examples, and the data has {len(train)} (after data.val_fraction's share): lower "
                                f"one of them (the largest two disjoint parts: data.train_size={len(train) // 2})")
            train = train[part * size:(part + 1) * size]
        return {"val": order[:n_val].sort().values, "train": train.sort().values}

    def encode(self, codec, latent_std: float | None = None) -> None:
        """A latent model's data: each image's latent Gaussian (``codec.encode``: mean and standard
        deviation, stacked), in place of the image. Computed once, with a progress bar, and cached
        under the data's fingerprint and the codec's identity; with data.hflip the flipped
        training images are encoded too, as examples of their own (a flip of the latents is not
        the latent of the flip). With ``latent_std`` (a latent model of this project), a codec
        not yet normalised is first normalised per channel on the training latents; the
        latents are then kept normalised (``codec.normalised``), and batches draw a latent from
        each (``on_after_batch_transfer``). The images stay, as the reference of FID."""
        key = {"source": "latents", "data": self.fingerprint, "codec": codec.identity(), "hflip": self.cfg.hflip,
               "size": self.cfg.image_size, "format": 2}
        flips = self.cfg.hflip

        def build() -> dict:
            return {"train": encode_images(codec, self.reference_images(), flips, "encoding the training images"),
                    "val": encode_images(codec, self.reference_images(held_out=True), False, "and the held-out ones")}

        latents = cached_tensors(key, build, self.cfg.cache_dir)
        if latent_std is not None and codec.statistics is None:
            codec.measure(latents["train"], latent_std)
        train_labels, val_labels = self.train_set.labels, self.val_set.labels
        if flips and train_labels is not None:
            train_labels = torch.cat([train_labels, train_labels])
        self.images = {"train": self.train_set, "val": self.val_set}
        self.train_set = InMemoryDataset(codec.normalised(latents["train"]), train_labels)
        self.val_set = InMemoryDataset(codec.normalised(latents["val"]), val_labels)

    def add_prior(self, x0: Tensor, label: int) -> None:
        """DreamBooth's class images ``x0`` (latents, undrawn: a standard deviation of 0), all of
        class ``label``: every training batch is followed by as many of them (``PriorBatches``)."""
        if len(x0) < min(self.cfg.batch_size, len(self.train_set)):
            raise DataError(f"{len(x0)} class images cannot fill batches of {self.cfg.batch_size}: raise "
                            "lora.class_images")
        examples = torch.cat([x0, torch.zeros_like(x0)], 1) if self.latent else x0
        self.prior = InMemoryDataset(examples, torch.full((len(x0),), label, dtype=torch.int64))

    @property
    def latent(self) -> bool:
        """Whether the examples are latents of the images (``encode``)."""
        return bool(self.images)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """A latent model's: the shape of the images that were encoded."""
        return self.images["train"].data.shape[1], self.cfg.image_size, self.cfg.image_size

    @property
    def is_image(self) -> bool:
        return self.train_set.data.dtype == torch.uint8 and self.train_set.data.ndim == 4

    @property
    def data_shape(self) -> tuple[int, ...]:
        """The shape the network sees: images are cropped to data.image_size."""
        shape = tuple(self.train_set.data.shape[1:])
        if self.latent:                                  # mean and standard deviation of each latent
            return (shape[0] // 2, *shape[1:])
        return (shape[0], self.cfg.image_size, self.cfg.image_size) if self.is_image else shape

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) or None

    def reference_images(self, held_out: bool = False) -> Tensor:
        """The training examples (or the ``held_out`` validation ones) as the network sees them,
        without augmentation: images centre-cropped to data.image_size (uint8), other data as it
        is; a latent model's images, not their latents. Quality metrics such as FID compare
        samples with these."""
        split = "val" if held_out else "train"
        data = (self.images or {"train": self.train_set, "val": self.val_set})[split].data
        return center_crop(data, self.cfg.image_size) if data.dtype == torch.uint8 and data.ndim == 4 else data

    def training_examples(self, indices: list[int]) -> Tensor:
        """Training examples number ``indices`` as the network sees them (images centre-cropped
        and in [-1, 1]): the starting points of restoration and of interpolation between images."""
        reference = self.reference_images()
        if not indices or max(indices) >= len(reference) or min(indices) < 0:
            raise DataError(f"images={list(indices)}: the training data has {len(reference)} images "
                            f"(0 to {len(reference) - 1})")
        examples = reference[list(indices)]
        return to_unit_range(examples) if examples.dtype == torch.uint8 else examples

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        """Lightning calls this on the training device (the GPU, when there is one). Images are
        cropped to data.image_size, at a random place per image when training with
        data.random_crop (else centred), flipped per image when training with data.hflip, and
        scaled to [-1, 1]; validation batches are only centre-cropped and scaled."""
        data, labels, *paired_noise = batch
        training = self.trainer is not None and self.trainer.training
        if data.dtype == torch.uint8:
            data = to_unit_range(self.augment(data) if training else center_crop(data, self.cfg.image_size))
        elif self.latent:                 # a latent drawn from each image's Gaussian; its mean for validation
            mean, std = data.chunk(2, dim=1)
            data = mean + std * torch.randn_like(std) if training else mean
        elif self.scaling is not None:    # a tensor file's data, each set turned at random (data.rotate), scaled
            data = self.scaling.latents(rotated(data) if training and self.cfg.rotate else data)
        return data, labels, *paired_noise

    def scale_with(self, scaling) -> None:
        """Serve the data scaled by ``scaling`` (``codecs.FeatureRange``), measured on the training
        examples here unless it already is (a loaded run's)."""
        if scaling.statistics is None:
            scaling.measure(self.train_set.data)
        self.scaling = scaling

    def augment(self, images: Tensor) -> Tensor:
        size = self.cfg.image_size
        images = random_crop(images, size) if self.cfg.random_crop else center_crop(images, size)
        return random_flip(images) if self.cfg.hflip else images

    def train_dataloader(self):
        """Batches indexed straight from the data tensor on the training device when the data
        is there (CPU) or fits there (a CUDA or Apple GPU, up to data.gpu_cache_gb); otherwise a
        DataLoader streams them from pinned host memory. ``DeviceBatches`` keep their place in
        the epoch through a checkpoint; a DataLoader does not: a resumed run reshuffles the
        epoch it was in, and says so."""
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        batch_size = min(self.cfg.batch_size, len(self.train_set) // world_size)      # small data: one batch an epoch
        if batch_size < 1:
            raise DataError(f"{len(self.train_set)} training examples cannot be shared among {world_size} processes")
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        data, labels, noise = self.train_set.data, self.train_set.labels, self.train_set.noise
        if device.type == "cpu" or data.nbytes <= self.cfg.gpu_cache_gb * 2**30:
            batches = DeviceBatches(data.to(device), None if labels is None else labels.to(device), batch_size,
                                    rank, world_size, self.seed, None if noise is None else noise.to(device))
            if self.prior is None:
                return batches
            prior = DeviceBatches(self.prior.data.to(device), self.prior.labels.to(device), batch_size, rank,
                                  world_size, self.seed + 1)
            return PriorBatches(batches, prior)
        if self.prior is not None:
            raise DataError(f"the training data ({data.nbytes / 2**30:.1f} GiB) is above data.gpu_cache_gb, and "
                            "DreamBooth's batches of class images are served from the device: raise data.gpu_cache_gb")
        if self.trainer is not None and self.trainer.ckpt_path and rank == 0:
            print(f"note: the training data ({data.nbytes / 2**30:.1f} GiB) is above data.gpu_cache_gb and comes "
                  "through a DataLoader, which does not keep its place in the epoch: the resumed run reshuffles "
                  "this epoch, so its batches differ from an uninterrupted run's (raise data.gpu_cache_gb if the "
                  "GPU has room)")
        return DataLoader(self.train_set, batch_size=batch_size, shuffle=True, drop_last=True,
                          collate_fn=keep_batch, num_workers=self.cfg.num_workers,
                          pin_memory=device.type == "cuda", persistent_workers=self.cfg.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.cfg.batch_size, collate_fn=keep_batch)


def encode_images(codec, images: Tensor, flips: bool, what: str, batch_size: int = 64) -> Tensor:
    """``codec.encode`` of uint8 ``images`` (and, with ``flips``, of their mirror images after
    them), a batch at a time with a progress bar."""
    if flips:
        images = torch.cat([images, images.flip(-1)])
    c, h, w = codec.latent_shape(tuple(images.shape[1:]))
    chunks = images.split(batch_size) if len(images) else []
    progress = tqdm(chunks, desc=what, unit="batch", disable=not chunks)
    moments = [codec.encode(to_unit_range(chunk)) for chunk in progress]
    return torch.cat(moments) if moments else torch.zeros(0, 2 * c, h, w)


class PairedDataModule(DiffusionDataModule):
    """Reflow's data (``pairs.py``): the teacher's samples as the examples, each with the noise it
    is paired with, split and served like any data, as batches (data, labels, noise). They are
    in the space the teacher samples in (a latent teacher's latents, a tensor file's scaled
    data); ``codec``, the teacher's, decodes them for the quality metrics."""

    def __init__(self, cfg, seed: int, pairs, codec):
        super().__init__(cfg, seed)
        self.pairs, self.codec = pairs, codec

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        pairs = self.pairs
        check_trainable(pairs.x0, self.cfg)
        self.class_names, self.cluster_sizes = pairs.class_names, pairs.cluster_sizes
        split = self.split(len(pairs.x0))
        self.train_set, self.val_set = (InMemoryDataset(pairs.x0[i], None if pairs.labels is None else pairs.labels[i],
                                                        pairs.noise[i]) for i in (split["train"], split["val"]))
        self.fingerprint = fingerprint_key({"pairs": pairs.fingerprint, **{key: getattr(self.cfg, key)
                                                                           for key in SPLIT_KEYS}})

    def reference_images(self, held_out: bool = False) -> Tensor:
        """The teacher's samples as data, which FID (or SWD and MMD) compares the student's
        samples with: decoded by the teacher's codec, and images as 8-bit ones."""
        data = self.codec.decode((self.val_set if held_out else self.train_set).data)
        return to_uint8(data) if data.ndim == 4 else data
