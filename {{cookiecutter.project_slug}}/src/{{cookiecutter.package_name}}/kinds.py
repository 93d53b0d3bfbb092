"""What one example of the data is: a vector (D,), a sequence (C, L) or an image (C, H, W), read
off its shape, or a set of P points (P, D), which has the shape of a sequence and says so
(data.kind=set). The networks (``models.MODELS``), the pictures, the distances and inspect-data
all ask ``data_kind``, so that they agree; the data check and the temporal U-Net ask
``steps_first_doubt`` whether sequences were saved the wrong way round."""
from __future__ import annotations

KINDS = {1: "vector", 2: "sequence", 3: "image"}        # dimensions of one example -> its kind
DECLARED = {"set": 2}                                   # kinds that data.kind names, and their dimensions


def data_kind(data_shape: tuple[int, ...], declared: str = "auto") -> str:
    """What one example of this shape is: a vector (D,), a sequence (C, L), an image (C, H, W),
    or, when ``declared`` so (data.kind=set), a set of P points (P, D)."""
    if declared != "auto" and DECLARED.get(declared) == len(data_shape):
        return declared
    return KINDS.get(len(data_shape), f"{len(data_shape)}-dimensional array")


def steps_first_doubt(channels: int, steps: int) -> str | None:
    """Sequences are (channels, steps). More channels than steps most likely means (steps, channels),
    the layout of many trajectory files, read the wrong way round: say so and how to mend it."""
    if channels <= steps:
        return None
    return (f"the sequences are read as {channels} channels over {steps} steps ((N, C, L), channels first); if "
            f"they are {channels} steps of {steps} numbers, save data.transpose(1, 2)")
