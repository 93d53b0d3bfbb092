"""Where data comes from: toy 2D sets, scikit-learn digits, a folder of images, torchvision
datasets and tensor files.

Each source is one entry of ``SOURCES``: a function that looks at the configuration (and,
for a folder, lists its files once) and returns the source's fingerprint, everything the data
depends on, together with a function that decodes it. Image sources are decoded once and
cached under their fingerprint (see cache.py); toy points and tensor files are quick to make
or read and are not cached.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from ..storage import UnreadableFile, read_tensors
from .cache import cached, fingerprint_key
from .decode import (
    CAPTION,
    Decoded,
    count_suffixes,
    decode_folder,
    fit_image,
    labels_by_name,
    read_captions,
    scan_folder,
    stack,
)
from .toy import make_toy2d

# name: (torchvision class, keyword arguments selecting the training split, has class labels)
TORCHVISION_SETS = {
    "mnist": ("MNIST", {"train": True}, True),
    "fashion_mnist": ("FashionMNIST", {"train": True}, True),
    "cifar10": ("CIFAR10", {"train": True}, True),
    "celeba": ("CelebA", {"split": "train", "target_type": []}, False),
    "flowers102": ("Flowers102", {"split": "train"}, True),
}

Prepared = tuple[dict, Callable[[], Decoded]]


@dataclass(frozen=True)
class Source:
    """``prepare(cfg, size, seed)`` returns the fingerprint and the decoder of one kind of data;
    ``cached``: whether decoding is slow enough to keep the result on disk."""

    prepare: Callable[..., Prepared]
    cached: bool = True


def load_source(cfg, seed: int = 0) -> Decoded:
    """The configured data: toy points as float (N, 2), everything else as uint8 (N, C, H, W),
    with its fingerprint."""
    size = stored_size(cfg)
    source = SOURCES[cfg.name]
    details, decode = source.prepare(cfg, size, seed)
    # format: bump it when decoding changes
    fingerprint = {"source": cfg.name, "size": size, "channels": cfg.channels, "format": 3, **details}
    decoded = cached(fingerprint, decode, cfg.cache_dir) if source.cached else decode()
    decoded.fingerprint = fingerprint_key(fingerprint)
    return decoded


def stored_size(cfg) -> int:
    """Images are stored 1/8 larger when training crops them at random positions."""
    return cfg.image_size + cfg.image_size // 8 if cfg.random_crop else cfg.image_size


def toy_source(cfg, size: int, seed: int) -> Prepared:
    def decode():
        points, labels = make_toy2d(cfg.toy_shape, cfg.toy_samples, seed)
        names = [] if labels is None else [str(i) for i in range(int(labels.max()) + 1)]
        return Decoded(points, labels, names)

    return {"shape": cfg.toy_shape, "samples": cfg.toy_samples, "seed": seed}, decode


def folder_source(cfg, size: int, seed: int) -> Prepared:
    """Every image under data.root, labelled by its subfolder, its caption or data.prompt as
    asked; the fingerprint lists each file's name, size and date (the captions' too)."""
    root = folder(cfg.root)
    scan = scan_folder(root)
    files = [file_signature(path, root) for path in scan[0]]
    captions = [file_signature(path, root) for path in scan[1] if path.suffix == CAPTION] if cfg.captions else []
    details = {"root": str(root.resolve()), "files": files, "labels": cfg.labels_from_subfolders,
               "captions": captions, "prompt": cfg.prompt}

    def decode() -> Decoded:
        decoded = decode_folder(root, size, cfg.channels, cfg.labels_from_subfolders, scan)
        if cfg.captions or cfg.prompt:
            texts = [cfg.prompt] * len(decoded.files) if cfg.prompt else read_captions(decoded.files, root)
            decoded.labels, decoded.class_names = labels_by_name(texts)
            decoded.others = [name for name in decoded.others if not (cfg.captions and name.endswith(CAPTION))]
        return decoded

    return details, decode


def digits_source(cfg, size: int, seed: int) -> Prepared:
    import sklearn

    return {"sklearn": sklearn.__version__}, lambda: load_digits(size, cfg.channels)


def torchvision_source(cfg, size: int, seed: int) -> Prepared:
    """The published sets are fixed: their name and folder identify them."""
    details = {"root": str(Path(cfg.root).expanduser().resolve())}
    return details, lambda: load_torchvision(cfg.name, cfg.root, size, cfg.channels)


def tensor_file_source(cfg, size: int, seed: int) -> Prepared:
    file = Path(cfg.root).expanduser()
    if not file.is_file():
        raise DataError(f"data.root '{cfg.root}' is not a file; for data.name=tensor_file point it at a .pt or "
                        ".npy or .npz file")
    return {"root": str(file.resolve()), "file": file_signature(file, file.parent)}, lambda: load_tensor_file(file)


def file_signature(path: Path, root: Path) -> tuple[str, int, int]:
    """Name, size and modification time: a file that changes changes at least one of them. A
    broken symbolic link has only its own (decoding then lists it as unreadable)."""
    stat = path.stat() if path.exists() else path.lstat()
    return str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns


def folder(root: str) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data.root '{root}' is not a folder; point data.root at your images, "
                        "e.g. data.root=~/pictures")
    return path


def report_bad_files(decoded: Decoded, cfg) -> None:
    """Unreadable and non-image files are never dropped silently: listed, or fatal if asked."""
    if decoded.bad:
        listing = "\n  ".join(f"{b['path']} ({b['error']})" for b in decoded.bad[:10])
        more = f"\n  ... and {len(decoded.bad) - 10} more" if len(decoded.bad) > 10 else ""
        message = f"{len(decoded.bad)} unreadable image(s) under {cfg.root}:\n  {listing}{more}"
        if cfg.on_bad_file == "fail":
            raise DataError(message + "\n(set data.on_bad_file=skip to train without them)")
        warnings.warn("skipped " + message, stacklevel=2)
    if decoded.others:
        warnings.warn(f"ignored {len(decoded.others)} non-image file(s) under {cfg.root} "
                      f"({count_suffixes(decoded.others)}), e.g. {decoded.others[0]}", stacklevel=2)


def load_digits(size: int, channels: int) -> Decoded:
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels), shipped with the package."""
    from PIL import Image
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    pixels = (digits.images * (255 / 16)).round().astype(np.uint8)
    images = [fit_image(Image.fromarray(p), size, channels) for p in pixels]
    return Decoded(stack(images), torch.as_tensor(digits.target, dtype=torch.int64), [str(i) for i in range(10)])


def load_torchvision(name: str, root: str, size: int, channels: int) -> Decoded:
    """A torchvision dataset's training split, downloaded into ``root`` if it is not there."""
    import torchvision
    from tqdm import tqdm

    class_name, split, labelled = TORCHVISION_SETS[name]
    cls = getattr(torchvision.datasets, class_name)
    root_path = Path(root).expanduser()
    try:
        dataset = cls(root_path, **split, download=False)
    except RuntimeError:
        try:
            dataset = cls(root_path, **split, download=True)
        except Exception as error:
            raise DataError(
                f"{class_name} is not in '{root_path}' and could not be downloaded ({error}). "
                f"On a machine with internet run: python -c \"import torchvision; "
                f"torchvision.datasets.{class_name}('{root_path}', download=True)\" "
                f"and copy the folder '{root_path}' here, or set data.root") from None
    images, labels = [], []
    for image, target in tqdm(dataset, desc=f"decoding {class_name}", unit="img"):
        images.append(fit_image(image, size, channels))
        labels.append(target)
    if not labelled:
        return Decoded(stack(images))
    names = list(getattr(dataset, "classes", [])) or [str(i) for i in range(max(labels) + 1)]
    return Decoded(stack(images), torch.as_tensor(labels, dtype=torch.int64), names)


def load_tensor_file(path: str | Path) -> Decoded:
    """A .pt file (a tensor, or a dict with "data" and optional "labels", "conditions" and
    "mask"), a .npy array, or a .npz file of arrays under those names.

    Shape (N, C, H, W) is a batch of images: uint8 in [0, 255], or float already in [-1, 1].
    Any other shape (N, ...) is a batch of vectors, sequences (N, C, L) or sets of points
    (N, P, D), used as they are. "conditions" (N, K) are real numbers that each example is
    conditioned on (observations, start and goal, properties); "mask" (N, P), True for the real
    points of sets of different sizes: the missing ones become rows of NaN (see
    ``models/set_transformer.py``), whatever the file held there.
    """
    file = Path(path).expanduser()
    if file.suffix not in (".pt", ".npy", ".npz"):
        raise DataError(f"'{file.name}': tensor files must end in .pt, .npy or .npz")
    try:
        content = read_tensors(file) if file.suffix == ".pt" else numpy_arrays(file)
    except (UnreadableFile, ValueError, OSError, EOFError) as why:       # numpy: objects, truncated, empty
        raise DataError(f"'{file}' is not a readable tensor file ({why}); save the data as numbers with "
                        "torch.save({'data': tensor}) or numpy.save(path, array)") from None
    content = content if isinstance(content, dict) else {"data": content}
    unknown = sorted(set(content) - {"data", "labels", "conditions", "mask"})
    if unknown:
        raise DataError(f"'{file}' holds keys {unknown}; a tensor file's dict holds 'data' and, if any, 'labels', "
                        "'conditions' and 'mask'")
    data = content.get("data")
    if not isinstance(data, torch.Tensor) or data.ndim < 2 or len(data) < 2:
        raise DataError(f"'{file}' must hold a tensor of shape (N, ...) with N >= 2 examples"
                        f" (or a dict with key 'data'); found {type(data).__name__}"
                        f"{'' if not isinstance(data, torch.Tensor) else ' of shape ' + str(tuple(data.shape))}")
    if data.dtype.is_complex or data.dtype == torch.bool:
        raise DataError(f"'{file}' holds {data.dtype} data; store uint8 images in [0, 255] or real numbers")
    if data.dtype == torch.uint8 and data.ndim != 4:
        hint = f" (grayscale images: data[:, None], of shape {tuple(data[:, None].shape)})" if data.ndim == 3 else ""
        raise DataError(f"'{file}' holds uint8 data of shape {tuple(data.shape)}: uint8 is read as images of shape "
                        f"(N, C, H, W){hint}; store any other data as floats")
    if data.dtype != torch.uint8:
        data = data.float()
        finite = data[torch.isfinite(data)]
        if data.ndim == 4 and len(finite) and (finite.min() < -1.01 or finite.max() > 1.01):
            raise DataError(f"'{file}' holds float images in [{finite.min():.3g}, {finite.max():.3g}]; "
                            "store uint8 in [0, 255] or floats scaled to [-1, 1]")
    if content.get("mask") is not None:
        data = with_missing_points(data, torch.as_tensor(content["mask"]), file)
    labels = content.get("labels")
    labels = None if labels is None else class_numbers(torch.as_tensor(labels), len(data), file)
    names = [] if labels is None else [str(i) for i in range(int(labels.max()) + 1)]
    conditions = content.get("conditions")
    conditions = None if conditions is None else condition_rows(torch.as_tensor(conditions), len(data), file)
    return Decoded(data, labels, names, conditions)


def numpy_arrays(file: Path) -> Tensor | dict[str, Tensor]:
    """A .npy array as a tensor, or a .npz file's arrays as a dict of tensors (no pickled objects)."""
    loaded = np.load(file, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        return torch.from_numpy(loaded)
    with loaded:
        return {key: torch.from_numpy(loaded[key]) for key in loaded.files}


def with_missing_points(data: Tensor, mask: Tensor, file: Path) -> Tensor:
    """Sets (N, P, D) whose points where ``mask`` (N, P) is False are missing: rows of NaN."""
    if data.ndim != 3 or not data.is_floating_point():
        raise DataError(f"'{file}': a mask marks the real points of sets, and needs float data of shape (N, P, D); "
                        f"found {data.dtype} of shape {tuple(data.shape)}")
    if mask.shape != data.shape[:2] or not (mask.dtype == torch.bool or ((mask == 0) | (mask == 1)).all()):
        raise DataError(f"'{file}': mask must be {tuple(data.shape[:2])} (N, P) of True/False or 1/0, True for the "
                        f"real points; found {mask.dtype} of shape {tuple(mask.shape)}")
    mask = mask.bool()
    empty = (~mask.any(1)).nonzero().flatten()
    if len(empty):
        raise DataError(f"'{file}': {len(empty)} set(s) have no real point in the mask (the first: index "
                        f"{empty[0].item()}); every set needs at least one")
    bad = (~torch.isfinite(data) & mask[..., None]).any(-1).any(-1).nonzero().flatten()
    if len(bad):
        raise DataError(f"'{file}': {len(bad)} set(s) hold NaN or Inf at real points (the first: index "
                        f"{bad[0].item()}); fix them, or mark those points missing in the mask")
    return torch.where(mask[..., None], data, torch.nan)


def condition_rows(conditions: Tensor, n: int, file: Path) -> Tensor:
    """Conditions as float (N, K), finite, one row per example."""
    if conditions.ndim == 1:
        conditions = conditions[:, None]
    if conditions.ndim != 2 or len(conditions) != n or conditions.dtype.is_complex or conditions.dtype == torch.bool:
        raise DataError(f"'{file}': conditions must be ({n}, K) real numbers, one row of K per example; found "
                        f"{conditions.dtype} of shape {tuple(conditions.shape)}")
    conditions = conditions.float()
    bad = (~torch.isfinite(conditions)).any(1).nonzero().flatten()
    if len(bad):
        raise DataError(f"'{file}': {len(bad)} condition row(s) hold NaN or Inf (the first: index {bad[0].item()}); "
                        "every example needs a finite condition")
    return conditions


def class_numbers(labels: Tensor, n: int, file: Path) -> Tensor:
    """Labels as int64 class numbers 0..K-1, one per example; whole-valued floats are accepted."""
    if labels.shape != (n,) or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise DataError(f"'{file}': labels must be {n} non-negative integers (class numbers), one per example; "
                        f"found {labels.dtype} of shape {tuple(labels.shape)}")
    if labels.is_floating_point() and not (torch.isfinite(labels).all() and (labels == labels.round()).all()):
        found = labels[labels != labels.round()][:3].tolist()
        raise DataError(f"'{file}': labels must be whole class numbers 0, 1, 2, ...; found {found}")
    labels = labels.to(torch.int64)
    if labels.min() < 0 or labels.max() >= n:
        raise DataError(f"'{file}': labels must number the classes 0..K-1 with K at most the {n} examples; "
                        f"found labels from {labels.min().item()} to {labels.max().item()}")
    return labels


SOURCES = {
    "toy2d": Source(toy_source, cached=False),
    "digits": Source(digits_source),
    "image_folder": Source(folder_source),
    "tensor_file": Source(tensor_file_source, cached=False),
    **{name: Source(torchvision_source) for name in TORCHVISION_SETS},
}
