"""The decoded-data cache: decode once, then load in a moment.

An entry is keyed by a fingerprint of everything the decoded tensor depends on (for a
folder: every file's path, size and modification time, and the size, channels and crop), so
a changed folder gets a new entry. A latent model's latents are cached the same way, under the
data's fingerprint and the autoencoder's identity. Entries are written to a temporary file and
renamed, so an interrupted build never leaves a cache entry that would be used.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from ..storage import save_atomically
from .decode import Decoded


def fingerprint_key(fingerprint: dict) -> str:
    """A short hash of the fingerprint: equal keys, equal data."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(fingerprint: dict, cache_dir: str) -> Path:
    return Path(cache_dir).expanduser() / f"{fingerprint['source']}-{fingerprint_key(fingerprint)}.pt"


def cached_tensors(fingerprint: dict, build: Callable[[], dict], cache_dir: str) -> dict:
    """The tensors (a dict) that ``build`` makes, from the cache entry of ``fingerprint`` if there
    is one, else built and stored there."""
    path = cache_path(fingerprint, cache_dir)
    if path.is_file():
        return torch.load(path, mmap=True, weights_only=True)
    tensors = build()
    save_atomically(tensors, path)
    return tensors


def cached(fingerprint: dict, build: Callable[[], Decoded], cache_dir: str) -> Decoded:
    return Decoded(**cached_tensors(fingerprint, lambda: asdict(build()), cache_dir))
