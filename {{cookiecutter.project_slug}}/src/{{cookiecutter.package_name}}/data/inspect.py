"""``inspect-data``: what is in the configured data, what is wrong with it, and a preview,
before any time is spent training on it. This module only reports; the command saves."""
from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor

from ..kinds import data_kind
from ..pixels import to_uint8
from ..sets import point_counts
from .augment import center_crop
from .datamodule import layout_doubt, value_problem
from .decode import Decoded, count_suffixes
from .sources import load_source

FEW_IMAGES = 1000        # below this, diffusion models mostly memorise


def data_report(cfg) -> tuple[str, Tensor | None, list[str], str]:
    """Decode (or load from the cache) the configured data; return the report, a preview (see
    ``preview``), the class names of its rows, if any, and what a preview example is (``kind``)."""
    decoded = load_source(cfg)
    lines = [f"data.name={cfg.name}" + (f"  data.root={cfg.root}" if cfg.name not in ("toy2d", "digits") else ""),
             f"examples: {len(decoded.data)}, stored as {tuple(decoded.data.shape[1:])} {decoded.data.dtype}"]
    warnings = []
    if decoded.files:
        lines += describe_files(decoded, cfg.image_size, warnings)
    lines += describe_labels(decoded, warnings)
    kind = data_kind(tuple(decoded.data.shape[1:]), cfg.kind)
    if kind in ("vector", "sequence", "set"):
        lines += describe_values(decoded, kind)
    doubt = layout_doubt(decoded.data, cfg.kind)
    if doubt:
        warnings.append(doubt)
    problem = value_problem(decoded.data, sets=kind == "set")
    if problem:
        warnings.append(f"{problem}: training refuses this data")
    if len(decoded.data) < FEW_IMAGES and kind == "image":
        warnings.append(f"only {len(decoded.data)} images: diffusion models need thousands; expect samples that copy "
                        "the training images. Keep the model small and use data.hflip where it makes sense")
    lines += [f"WARNING: {w}" for w in warnings] or ["no warnings"]
    return "\n".join(lines), *preview(decoded, cfg.image_size), kind


PREVIEW_PER_CLASS = 8


def preview(decoded: Decoded, size: int) -> tuple[Tensor | None, list[str]]:
    """Images (as uint8, a tensor file's floats in [-1, 1] converted; centre-cropped as training
    sees them): with up to 16 classes a row of 8 per class (blank where a class has fewer) and the
    class names; else 64 spread over the data. 2D points: up to 2000; other vectors: none;
    sequences and sets: the first 16."""
    data, labels = decoded.data, decoded.labels
    if data.ndim == 4:
        data = data if data.dtype == torch.uint8 else to_uint8(data)
        names = decoded.class_names or ([str(i) for i in range(int(labels.max()) + 1)] if labels is not None else [])
        if labels is not None and len(names) <= 16:
            rows = [data[labels == k][:PREVIEW_PER_CLASS] for k in range(len(names))]
            tiles = torch.zeros(len(names), PREVIEW_PER_CLASS, *data.shape[1:], dtype=torch.uint8)
            for k, row in enumerate(rows):
                tiles[k, :len(row)] = row
            return center_crop(tiles.flatten(0, 1), size), names
        pick = torch.linspace(0, len(data) - 1, min(64, len(data))).long()
        return center_crop(data[pick], size), []
    if data.ndim == 2:
        return (data[:2000] if data.shape[1] == 2 else None), []
    return data[:16], []


def describe_values(decoded: Decoded, kind: str) -> list[str]:
    """The shape in words, the range, mean and spread of each feature (a sequence's channel, a
    point's coordinate), the sizes of sets, and the conditions' ranges."""
    data = decoded.data
    if kind == "vector":
        shape = f"vectors of {data.shape[1]} numbers"
    elif kind == "sequence":
        shape = f"sequences of {data.shape[1]} channel(s) over {data.shape[2]} steps"
    else:
        shape = f"sets of up to {data.shape[1]} points of {data.shape[2]} numbers"
    lines = [f"kind: {shape}"]
    features = data.transpose(0, 1).flatten(1) if kind == "sequence" else data.flatten(0, -2).T
    name = {"vector": "coordinate", "sequence": "channel", "set": "coordinate"}[kind]
    lines += [f"  {name} {i}: {feature_summary(feature)}" for i, feature in enumerate(features[:8])]
    if len(features) > 8:
        lines.append(f"  ... and {len(features) - 8} more")
    if kind == "set":
        sizes = point_counts(data)
        lines.append(f"points per set: {sizes.min().item()} to {sizes.max().item()}, median {sizes.median().item()}"
                     + ("" if sizes.min() < sizes.max() else " (all the same size: no mask)"))
    if decoded.conditions is not None:
        conditions = decoded.conditions
        lines.append(f"conditions: {conditions.shape[1]} per example")
        lines += [f"  condition {i}: {feature_summary(c)}" for i, c in enumerate(conditions.T[:8])]
    return lines


def feature_summary(values: Tensor) -> str:
    values = values[torch.isfinite(values)].double()
    if not len(values):
        return "no finite values"
    return (f"from {values.min().item():.4g} to {values.max().item():.4g}, mean {values.mean().item():.4g}, "
            f"std {values.std().item() if len(values) > 1 else 0.0:.4g}")


def describe_files(decoded: Decoded, size: int, warnings: list[str]) -> list[str]:
    files = decoded.files
    lines = [f"files: {len(files)} images decoded, {len(decoded.bad)} unreadable, {len(decoded.others)} not images"]
    lines += [f"  unreadable: {b['path']} ({b['error']})" for b in decoded.bad[:20]]
    if decoded.others:
        lines.append(f"  not images: {count_suffixes(decoded.others)}")
    if decoded.bad:
        warnings.append(f"{len(decoded.bad)} unreadable image file(s) are skipped (listed above); "
                        "data.on_bad_file=fail stops instead")
    resolutions = Counter((f["width"], f["height"]) for f in files)
    lines.append("resolutions: " + ", ".join(f"{w}x{h} x{n}" for (w, h), n in resolutions.most_common(8))
                 + (f", ... ({len(resolutions)} distinct)" if len(resolutions) > 8 else ""))
    lines.append("modes: " + ", ".join(f"{m} x{n}" for m, n in Counter(f["mode"] for f in files).most_common()))
    small = [f for f in files if min(f["width"], f["height"]) < size]
    if small:
        tiniest = min(small, key=lambda f: f["width"] * f["height"])
        warnings.append(f"{len(small)} image(s) are smaller than image_size={size} and will be upscaled "
                        f"(smallest: {tiniest['path']}, {tiniest['width']}x{tiniest['height']})")
    aspects = [f["width"] / f["height"] for f in files]
    if max(aspects) / min(aspects) > 1.1:
        oblong = sum(1 for a in aspects if abs(a - 1) > 0.05)
        warnings.append(f"aspect ratios range from {min(aspects):.2f} to {max(aspects):.2f} ({oblong} not square): "
                        "images are centre-cropped to a square; check preview.png for cut-off subjects")
    groups = [g for g in group_by(files, "sha1").values() if len(g) > 1]
    if groups:
        lines += [f"  duplicates: {', '.join(f['path'] for f in g)}" for g in groups[:10]]
        warnings.append(f"{sum(len(g) - 1 for g in groups)} exact duplicate file(s) in {len(groups)} group(s): "
                        "they count several times in training")
    return lines


def describe_labels(decoded: Decoded, warnings: list[str]) -> list[str]:
    if decoded.labels is None:
        return ["labels: none"]
    counts = torch.bincount(decoded.labels, minlength=len(decoded.class_names)).tolist()
    names = decoded.class_names or [str(i) for i in range(len(counts))]
    shown = ", ".join(f"{name}: {n}" for name, n in list(zip(names, counts))[:20])
    lines = [f"classes: {len(counts)} ({shown}{', ...' if len(counts) > 20 else ''})"]
    if min(counts) == 0 or max(counts) / min(counts) > 10:
        warnings.append(f"classes are unbalanced: {max(counts)} images in the largest, {min(counts)} in the smallest")
    return lines


def group_by(records: list[dict], key: str) -> dict:
    groups: dict = {}
    for record in records:
        groups.setdefault(record[key], []).append(record)
    return groups
