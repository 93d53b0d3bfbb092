"""``doctor``: what a teaching assistant asks for first, in one report to paste: versions
(the optional diffusers and transformers included), the GPU and what training would use on it, FID
weights, and a check of the configured data."""
from __future__ import annotations

import platform
import sys
from pathlib import Path

import torch

from ..config import load_config
from ..data.inspect import data_report
from ..devices import device_name, resolve_precision
from ..errors import UserError
from ..evaluation.features import INCEPTION_FILE, inception_weights

USAGE = """\
doctor  [key=value ...]   report Python, torch, CUDA, the GPU, the precision auto picks, FID weights
                          and the data check, for a bug report or a question"""


def run(overrides: list[str]) -> Path | None:
    print("\n".join(report(overrides)))
    return None


def report(overrides: list[str]) -> list[str]:
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    lines = [f"python      {sys.version.split()[0]} on {platform.system()} {platform.machine()}",
             f"torch       {torch.__version__} ({build}), {torch.get_num_threads()} CPU threads",
             f"lightning   {package_version('lightning')}",
             pretrained_extra(),
             *accelerators()]
    try:
        cfg = load_config(overrides)
    except UserError as error:
        return lines + [f"config      ERROR: {error}"]
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    lines.append(f"config      preset={cfg.preset} experiment={cfg.experiment} data.name={cfg.data.name} "
                 f"model.name={cfg.model.name} diffusion.objective={cfg.diffusion.objective}")
    lines.append(f"precision   trainer.precision={cfg.trainer.precision} -> {precision} here")
    lines.append(fid_weights(cfg.evaluation))
    try:
        data = data_report(cfg.data)[0].splitlines()
        lines += [f"data        {data[0]}", *(f"            {line}" for line in data[1:])]
    except UserError as error:
        lines.append(f"data        ERROR: {error}")
    return lines


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def pretrained_extra() -> str:
    """The optional packages that pretrained diffusers pipelines and LoRA adapters need (adapters/)."""
    versions = {name: package_version(name) for name in ("diffusers", "transformers", "peft")}
    missing = [extra for extra, names in (("pretrained", ("diffusers", "transformers")), ("lora", ("peft",)))
               if any(versions[name] == "not installed" for name in names)]
    install = f" (pip install -e '.[{','.join(missing)}]')" if missing else ""
    return "pretrained  " + ", ".join(f"{name} {v}" for name, v in versions.items()) + install


def accelerators() -> list[str]:
    """Each CUDA GPU with its compute capability and free memory, or why there is none; MPS."""
    if not torch.cuda.is_available():
        why = "this torch is a CPU-only build" if not torch.version.cuda else "torch finds no CUDA GPU (driver?)"
        lines = [f"cuda        not available: {why}"]
    else:
        lines = []
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            lines.append(f"cuda:{index:<6} {device_name(torch.device('cuda', index))}, "
                         f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free")
    lines.append(f"mps         {'available' if torch.backends.mps.is_available() else 'not available'}")
    return lines


def fid_weights(evaluation) -> str:
    if evaluation.extractor != "inception":
        return f"fid         evaluation.extractor={evaluation.extractor} ({evaluation.extractor_module})"
    path = inception_weights(evaluation.extractor_weights)
    if path.is_file():
        return f"fid         Inception weights present: {path}"
    return (f"fid         Inception weights missing ({path}): they download on first use; offline, run "
            f"fetch-weights where there is internet and copy {INCEPTION_FILE} there")
