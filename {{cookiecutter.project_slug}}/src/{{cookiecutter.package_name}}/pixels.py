"""The one image convention: uint8 [0, 255] on disk and in the data cache, float [-1, 1] for
the networks. Every conversion between the two goes through these two functions."""
import torch
from torch import Tensor


def to_unit_range(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1] (converted in place after the one copy to float)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"to_unit_range expects uint8 images, got {images.dtype}")
    return images.float().div_(127.5).sub_(1)


def to_uint8(x: Tensor) -> Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounded to nearest (not truncated), as FID implementations expect."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
