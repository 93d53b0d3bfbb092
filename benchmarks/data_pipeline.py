"""Images per second delivered to the training step: our decoded cache against a plain
torchvision ImageFolder + DataLoader (2 workers, the usual transforms), in the same run.

The folder: a few thousand JPEG and PNG crops of mixed sizes (40 to 400 pixels a side) cut
from the two real photographs scikit-learn ships, some grayscale, in two class folders.
Two figures for ours, timed after the one-off decode (whose time is reported too):
  * uint8: batches as our loader hands them over; with a GPU, cropping, flipping and the
    conversion to float then run on the GPU (DiffusionDataModule.on_after_batch_transfer), so this is all
    the CPU does;
  * float: the same batches flipped per image and converted to float in [-1, 1] on the CPU,
    as CPU-only training does, and as the ImageFolder pipeline does in its workers.

Run: python benchmarks/data_pipeline.py [--images 3000] [--sizes 32 64 128]
"""
import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _baked import import_baked_package

PROJECT = import_baked_package()
from diffusion_lab.config import load_config  # noqa: E402
from diffusion_lab.data import DiffusionDataModule  # noqa: E402
from diffusion_lab.data.augment import random_flip  # noqa: E402
from diffusion_lab.pixels import to_unit_range  # noqa: E402


def make_folder(root: Path, count: int) -> None:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    photos = load_sample_images().images
    for k in range(count):
        photo = photos[k % 2]
        folder = root / ("china", "flower")[k % 2]
        folder.mkdir(parents=True, exist_ok=True)
        h, w = rng.integers(40, 400, size=2)
        y, x = rng.integers(0, photo.shape[0] - h), rng.integers(0, photo.shape[1] - w)
        image = Image.fromarray(photo[y:y + h, x:x + w])
        if k % 10 == 0:
            image = image.convert("L")
        image.save(folder / f"{k:05d}.{'jpg' if k % 3 else 'png'}", quality=90)


def ours(root: Path, size: int, cache: Path, epochs: int) -> tuple[float, float, float]:
    cfg = load_config([f"data.root={root}", "data.name=image_folder", f"data.image_size={size}", "data.channels=3",
                       "data.val_fraction=0", "data.batch_size=128", f"data.cache_dir={cache}"],
                      config_dir=PROJECT / "configs").data
    start = time.perf_counter()
    data = DiffusionDataModule(cfg)
    data.setup()
    build = time.perf_counter() - start
    loader = data.train_dataloader()
    rates = []
    for convert in (False, True):
        count, start = 0, time.perf_counter()
        for _ in range(epochs):
            for images, _labels in loader:
                batch = to_unit_range(random_flip(images)) if convert else images  # as the data module does in training
                count += len(batch)
        rates.append(count / (time.perf_counter() - start))
    return build, *rates


def torchvision_baseline(root: Path, size: int, epochs: int) -> float:
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])
    dataset = datasets.ImageFolder(str(root), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=128, shuffle=True, num_workers=2, drop_last=True,
                                         persistent_workers=True)
    iterator = iter(loader)
    next(iterator)                                   # workers started: not counted
    count, start = 0, time.perf_counter()
    for images, _labels in iterator:
        count += len(images)
    for _ in range(epochs - 1):
        for images, _labels in loader:
            count += len(images)
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        start = time.perf_counter()
        make_folder(work / "images", args.images)
        print(f"folder of {args.images} JPEG/PNG images written in {time.perf_counter() - start:.1f} s")
        rows = ["| size | decode once (s) | ours, uint8 (img/s) | ours, float on CPU (img/s) "
                "| ImageFolder + DataLoader, 2 workers (img/s) | ratio uint8 | ratio float |", "|---|---|---|---|---|---|---|"]
        for size in args.sizes:
            build, raw, converted = ours(work / "images", size, work / "cache", epochs=20)
            slow = torchvision_baseline(work / "images", size, epochs=2)
            rows.append(f"| {size} | {build:.1f} | {raw:,.0f} | {converted:,.0f} | {slow:,.0f} "
                        f"| {raw / slow:.0f}x | {converted / slow:.0f}x |")
            print(rows[-1], flush=True)
        print("\n".join(rows))
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
