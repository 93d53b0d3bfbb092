"""Image sources, each decoded once into a uint8 tensor (N, C, H, W) and int64 labels.

Training then indexes this tensor directly; converting to float in [-1, 1] and random flips
happen per batch on the training device (see module.py).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor


class DataError(ValueError):
    """Data that cannot be used as configured, explained in one message meant for the user."""


def to_unit_range(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1


def to_uint8(x: Tensor) -> Tensor:
    """float [-1, 1] -> uint8 [0, 255], the rounding that FID implementations expect."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def fit_image(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """Convert to grayscale or RGB (transparency composited on white), resize the shorter side
    to ``size`` and centre-crop to a square. Returns uint8 (C, size, size)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image)
    image = image.convert("L" if channels == 1 else "RGB")
    image = ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def stack(images: list[np.ndarray]) -> Tensor:
    return torch.from_numpy(np.stack(images))


def load_digits(size: int, channels: int) -> tuple[Tensor, Tensor, list[str]]:
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels), ships with the package."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    pixels = (digits.images * (255 / 16)).round().astype(np.uint8)
    images = [fit_image(Image.fromarray(p), size, channels) for p in pixels]
    return stack(images), torch.as_tensor(digits.target, dtype=torch.int64), [str(i) for i in range(10)]


IMAGE_EXTENSIONS = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def list_images(root: Path) -> tuple[list[Path], list[Path]]:
    """All image files under ``root`` (recursively, hidden entries skipped), and the other files."""
    images, others = [], []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                path = Path(folder) / name
                (images if path.suffix.lower() in IMAGE_EXTENSIONS else others).append(path)
    return images, others


def load_image_folder(root: str, size: int, channels: int, labels_from_subfolders: bool):
    """Every image under ``root``; with ``labels_from_subfolders`` the first folder level
    below root names the class (root/cat/001.jpg is class "cat")."""
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise DataError(f"data.root '{root}' is not a folder; point data.root at your images, "
                        f"e.g. data.root=~/pictures")
    paths, others = list_images(root_path)
    if not paths:
        raise DataError(f"no images found under '{root_path}' ({len(others)} other files); "
                        f"supported extensions include .png .jpg .jpeg .bmp .gif .webp .tif")
    images, kept, bad = [], [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(fit_image(image, size, channels))
            kept.append(path)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
            bad.append(f"{path.relative_to(root_path)} ({type(error).__name__}: {error})")
    if bad:
        shown = "\n  ".join(bad[:10]) + (f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else "")
        warnings.warn(f"skipped {len(bad)} unreadable image(s) under {root_path}:\n  {shown}")
    if not images:
        raise DataError(f"none of the {len(paths)} image files under '{root_path}' could be read")
    if not labels_from_subfolders:
        return stack(images), None, []
    classes = [p.relative_to(root_path).parts[0] if len(p.relative_to(root_path).parts) > 1 else None for p in kept]
    if None in classes:
        loose = kept[classes.index(None)].name
        raise DataError(f"data.labels_from_subfolders is set, but '{loose}' lies directly in "
                        f"'{root_path}'; put each image in a folder named after its class")
    names = sorted(set(classes))
    index = {name: i for i, name in enumerate(names)}
    return stack(images), torch.tensor([index[c] for c in classes], dtype=torch.int64), names


TORCHVISION_SETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def load_torchvision(name: str, root: str, size: int, channels: int):
    """A torchvision dataset's training split, downloaded into ``root`` if it is not there."""
    import torchvision

    class_name = TORCHVISION_SETS[name]
    cls = getattr(torchvision.datasets, class_name)
    root_path = Path(root).expanduser()
    try:
        dataset = cls(root_path, train=True, download=False)
    except RuntimeError:
        try:
            dataset = cls(root_path, train=True, download=True)
        except Exception as error:
            raise DataError(
                f"{class_name} is not in '{root_path}' and could not be downloaded ({error}). "
                f"On a machine with internet run: python -c \"import torchvision; "
                f"torchvision.datasets.{class_name}('{root_path}', download=True)\" "
                f"and copy the folder '{root_path}' here, or set data.root") from None
    images = [fit_image(image, size, channels) for image, _ in dataset]
    return stack(images), torch.as_tensor(dataset.targets, dtype=torch.int64), list(dataset.classes)
