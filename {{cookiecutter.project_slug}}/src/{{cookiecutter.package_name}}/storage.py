"""Files that are never seen half-written: a reader finds the old version or the new one,
whatever happens during the write (Ctrl-C, a kill, a full disk); and files read without running
any code they might hold."""
import os
import re
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


class UnreadableFile(ValueError):
    """A file that ``read_tensors`` refuses, with why in a few words."""


def read_tensors(path: str | Path):
    """A torch file read weights-only: tensors, numbers, strings, lists and dicts, nothing else (a
    pickled object can run any code when it is loaded, so a shared file is never trusted with
    that). Raises ``UnreadableFile`` saying what is wrong: an object it holds, or that it is no
    torch file at all (empty, truncated, of another kind)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:              # a file that is not a torch file can fail in many ways
        python_object = re.search(r"GLOBAL (\S+)", str(error))
        if python_object:
            raise UnreadableFile(f"it holds a Python object ({python_object[1]}), and loading one can run any "
                                 "code") from None
        detail = f"{type(error).__name__}: {str(error).splitlines()[0][:100]}" if str(error) else type(error).__name__
        raise UnreadableFile(f"empty, truncated or not a torch file; {detail}") from None
