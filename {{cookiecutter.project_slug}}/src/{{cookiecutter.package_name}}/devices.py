"""The hardware, in one place: which device, which number type, what the device is called, and
the switches that make it fast. Training, sampling and ``bench`` all ask here.

Precisions are Lightning's names: ``32-true`` (float32), ``bf16-mixed`` and ``16-mixed``
(autocast to bfloat16 or float16; the noising, the loss and the sampler's arithmetic stay
float32), and ``auto``, resolved by ``resolve_precision``.
"""
from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from .errors import ConfigError

AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}     # the mixed precisions' autocast types


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA, else Apple's MPS, else the CPU; a device asked for by name must exist here."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name} is not a device; use auto, cpu, cuda, cuda:1 or mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    missing_gpu = device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count()
    if not available.get(device.type, False) or missing_gpu:
        raise ConfigError(f"device={name} is not available on this machine; use device=auto or device=cpu")
    return device


def training_device(accelerator: str) -> torch.device:
    """The device that trainer.accelerator names (Lightning's ``gpu`` is CUDA)."""
    return pick_device({"gpu": "cuda"}.get(accelerator, accelerator))


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16 autocast on Ampere or newer GPUs, fp16 with a gradient scaler on older
    ones (a T4 reports bf16 support, but only through slow emulation), float32 elsewhere."""
    if precision != "auto":
        return precision
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        major, _ = torch.cuda.get_device_capability()
        return "bf16-mixed" if major >= 8 else "16-mixed"
    return "32-true"


def check_training_hardware(accelerator: str, precision: str) -> None:
    """The accelerator and precision asked for (trainer.accelerator, trainer.precision) must exist here."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator}, but this machine has no CUDA GPU that torch can use; "
                          "use preset=cpu (or trainer.accelerator=auto), or install a CUDA build of torch")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator=mps, but Apple's MPS is not available here; "
                          "use trainer.accelerator=auto")
    on_cpu = accelerator == "cpu" or not (torch.cuda.is_available() or torch.backends.mps.is_available())
    if on_cpu and precision in ("16-mixed", "16-true"):
        raise ConfigError(f"trainer.precision={precision} needs a GPU; on a CPU use 32-true or bf16-mixed")


def sampling_precision(precision: str, device: torch.device) -> str:
    """The precision to sample in on ``device`` (``auto`` as in training); fp16 only on CUDA."""
    precision = resolve_precision(precision, device.type)
    if precision == "16-mixed" and device.type != "cuda":
        raise ConfigError(f"precision=16-mixed needs a CUDA GPU; on {device.type} use 32-true or bf16-mixed")
    return precision


def autocast(device: torch.device, precision: str):
    """Autocast to the number type of a mixed ``precision``; nothing for ``32-true``."""
    dtype = AUTOCAST.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def matmul_dtype(precision: str) -> torch.dtype:
    """The number type the matmuls run in under ``precision``."""
    return AUTOCAST.get(precision, torch.float32)


def device_name(device: torch.device) -> str:
    """The device as a person would say it: its model and compute capability, or the CPU's threads."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (compute {major}.{minor})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


@contextlib.contextmanager
def memory_errors(advice: str):
    """Running out of memory (a GPU's, or the host's allocator refusing) as one ``ConfigError``
    that says what to change, instead of a traceback from the allocator."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        raise ConfigError(f"{advice} (out of GPU memory: {str(error).splitlines()[0][:120]})") from None
    except RuntimeError as error:
        if "can't allocate memory" not in str(error):
            raise
        raise ConfigError(f"{advice} (out of memory: {str(error).splitlines()[0][-120:]})") from None


def host_memory() -> int | None:
    """Bytes of this machine's memory available now: Linux's MemAvailable (free memory and the
    file cache it can drop), elsewhere all of it; None where the system does not say (Windows)."""
    try:
        with open("/proc/meminfo") as meminfo:
            available = next(line for line in meminfo if line.startswith("MemAvailable:"))
        return int(available.split()[1]) * 1024
    except (OSError, StopIteration):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def synchronize(device: torch.device) -> None:
    """Wait until the device has finished the work queued so far (GPU calls return at once)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def set_float32_matmuls(tf32: bool) -> None:
    """TensorFloat-32 (10-bit mantissa) for float32 matmuls on Ampere or newer GPUs: several
    times faster, and precise enough for training under bf16 autocast. (torch already uses it
    for convolutions.)"""
    torch.backends.cuda.matmul.allow_tf32 = tf32


def compile_in_place(net: nn.Module, mode: str) -> None:
    """``torch.compile`` a network in place (trainer.compile; "none" leaves it as it is). Unlike
    ``torch.compile(net)``, its weights keep their names, so checkpoints do not change."""
    if mode != "none":
        net.compile(mode=None if mode == "default" else mode)
