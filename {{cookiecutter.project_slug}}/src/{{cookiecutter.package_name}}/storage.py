"""Files that are never seen half-written: a reader finds the old version or the new one,
whatever happens during the write (Ctrl-C, a kill, a full disk)."""
import os
from pathlib import Path

import torch


def save_atomically(obj, path: str | Path) -> Path:
    """``torch.save`` to a temporary file next to ``path`` (not in the system's temporary folder,
    which may be small or on another disk), flushed to disk, then renamed over ``path``; the
    rename is atomic. The temporary file is named after this process, so writers never collide;
    an interrupted one leaves only ``*.partial`` behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as file:
        torch.save(obj, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)
    return path
