"""Decoding images: from files of any size, mode and format to one uint8 tensor (N, C, H, W).

One pass over a folder decodes every image, records what it found in each file (size, mode,
a hash of its bytes) and which files could not be read, so that training and
``inspect-data`` report from the same facts.
"""
from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from tqdm import tqdm

from ..errors import DataError


def fit_image(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """Convert to grayscale or RGB (transparency composited on white, 16-bit and float
    images scaled to 8 bits), resize the shorter side to ``size`` and centre-crop to a
    square. Returns uint8 (C, size, size)."""
    if image.mode.startswith("I") or image.mode == "F":
        image = to_8_bit(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image)
    image = image.convert("L" if channels == 1 else "RGB")
    image = ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit integer ("I;16", "I") or float ("F") grayscale to 8 bits, scaled by the format's
    range (Pillow's own convert("L") clips at 255, which turns most 16-bit images white)."""
    array = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1e-12)
    return Image.fromarray(np.clip(array / top * 255, 0, 255).round().astype(np.uint8))


def stack(images: list[np.ndarray]) -> Tensor:
    return torch.from_numpy(np.stack(images))


@dataclass
class Decoded:
    """A decoded source: the data, its labels (or conditions), and what was found on the way.

    ``files`` holds one record per decoded file (path, width, height, mode, sha1), ``bad`` the
    files that could not be decoded with the reason, ``others`` the files that are not images.
    ``fingerprint`` is a hash of everything the data depends on (see ``sources.py``): equal
    fingerprints, equal data. Caches of anything computed from the data are keyed by it.
    """

    data: Tensor
    labels: Tensor | None = None
    class_names: list[str] = field(default_factory=list)
    conditions: Tensor | None = None        # a tensor file's float conditions (N, K), one row per example
    files: list[dict] = field(default_factory=list)
    bad: list[dict] = field(default_factory=list)
    others: list[str] = field(default_factory=list)
    fingerprint: str = ""


IMAGE_EXTENSIONS = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def scan_folder(root: Path) -> tuple[list[Path], list[Path]]:
    """All image files under ``root`` (recursively, hidden entries skipped), and the other files."""
    images, others = [], []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                path = Path(folder) / name
                (images if path.suffix.lower() in IMAGE_EXTENSIONS else others).append(path)
    return images, others


def decode_file(path: Path, size: int, channels: int) -> tuple[np.ndarray, dict]:
    """Decode one file completely (a truncated file fails here, not later in training)."""
    if not path.is_file():               # a named pipe would block the read forever
        kind = "a broken or looping symbolic link" if path.is_symlink() else "a named pipe, socket or device"
        raise OSError(f"not a regular file: {kind}")
    content = path.read_bytes()
    with Image.open(io.BytesIO(content)) as image:
        width, height = image.size
        if image.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):   # stored on its side
            width, height = height, width
        record = {"width": width, "height": height, "mode": image.mode, "sha1": hashlib.sha1(content).hexdigest()}
        image.draft(image.mode, (size, size))   # JPEG: decode at 1/2, 1/4 or 1/8 scale, never below size
        image = ImageOps.exif_transpose(image)  # camera photos: turned upright as their EXIF says
        return fit_image(image, size, channels), record


DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError, SyntaxError)


def decode_folder(root: Path, size: int, channels: int, labels_from_subfolders: bool,
                  scan: tuple[list[Path], list[Path]] | None = None) -> Decoded:
    """Decode every image under ``root`` with a progress bar, on all cores. ``scan`` is the
    folder's ``scan_folder`` listing when the caller has already made it."""
    paths, others = scan or scan_folder(root)
    if not paths:
        raise DataError(f"no images found under '{root}' ({len(others)} other files); "
                        "supported extensions include .png .jpg .jpeg .bmp .gif .webp .tif")

    def attempt(path):
        try:
            return decode_file(path, size, channels)
        except DECODE_ERRORS as error:
            return None, f"{type(error).__name__}: {error}"

    arrays, files, bad = [], [], []
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        results = pool.map(attempt, paths, chunksize=16)
        for path, (array, info) in tqdm(zip(paths, results), total=len(paths), desc=f"decoding {root}", unit="img"):
            relative = str(path.relative_to(root))
            if array is None:
                bad.append({"path": relative, "error": info})
            else:
                arrays.append(array)
                files.append({"path": relative, **info})
    if not arrays:
        raise DataError(f"none of the {len(paths)} image files under '{root}' could be read; first: "
                        f"{bad[0]['path']} ({bad[0]['error']})")
    decoded = Decoded(stack(arrays), files=files, bad=bad, others=[str(p.relative_to(root)) for p in others])
    if labels_from_subfolders:
        decoded.labels, decoded.class_names = labels_from_folders([Path(f["path"]) for f in files], root)
    return decoded


def count_suffixes(names: list[str]) -> str:
    """".txt x2, .db x1": what kinds of files these are."""
    counts = Counter(Path(name).suffix.lower() or "(none)" for name in names)
    return ", ".join(f"{suffix} x{n}" for suffix, n in counts.most_common())


def labels_from_folders(paths: list[Path], root: Path) -> tuple[Tensor, list[str]]:
    """The first folder below root names the class: root/cat/001.jpg is class "cat"."""
    loose = [p for p in paths if len(p.parts) == 1]
    if loose:
        raise DataError(f"data.labels_from_subfolders is set, but '{loose[0]}' lies directly in "
                        f"'{root}'; put each image in a folder named after its class")
    return labels_by_name([p.parts[0] for p in paths])


CAPTION = ".txt"        # an image's caption: the text file of the same name beside it (cat.jpg: cat.txt)


def read_captions(files: list[dict], root: Path) -> list[str]:
    """The caption of each decoded image (``files``' records), read from the text file beside it."""
    captions = []
    for record in files:
        path = (root / record["path"]).with_suffix(CAPTION)
        try:
            caption = " ".join(path.read_text(encoding="utf-8").split())
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"data.captions=true, but {record['path']} has no readable caption {path.name} beside it "
                            f"({type(error).__name__}): write one, or give every image one caption with "
                            "data.prompt='...'") from None
        if not caption:
            raise DataError(f"{path} is empty: write the caption of {record['path']} in it")
        captions.append(caption)
    return captions


def labels_by_name(names: list[str]) -> tuple[Tensor, list[str]]:
    """Each example's class number, and the classes: each distinct name (a subfolder, a caption,
    a prompt) is a class, numbered in sorted order. A text-to-image model is conditioned on
    class k through the text's embedding (``Model.use_prompts``)."""
    classes = sorted(set(names))
    index = {name: i for i, name in enumerate(classes)}
    return torch.tensor([index[name] for name in names], dtype=torch.int64), classes
