"""``export``: a trained run as a small folder to share or publish: the EMA weights as
safetensors, the resolved config, the class names and a preview (``runs.export_run``).
``sample``, ``evaluate`` and the task commands take the folder as ``run=`` on any machine. A run
fine-tuned from a diffusers pipeline (model.name=pretrained) is written as a diffusers folder; a
run of LoRA adapters (lora.base) with the adapters folded into its network's weights, or on a
diffusers pipeline as the adapters alone, in diffusers' LoRA format (merge=true: folded in)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import MISSING

from ..config import parse_command
from ..errors import ConfigError
from ..runs import export_run, load_run

USAGE = """\
export  run=DIR [out=DIR] write the run's EMA weights (safetensors), config and class names to
                          exports/<name>/ (or out=); sample and the tasks load it as run=exports/<name>;
                          a fine-tuned diffusers pipeline is written back as a diffusers folder,
                          LoRA adapters on one as diffusers' LoRA file (merge=true: folded in)"""


@dataclass
class ExportCommand:
    run: str = MISSING              # a run directory (runs/<name>) or a .ckpt file
    out: Optional[str] = None       # default exports/<run name>
    merge: bool = False             # LoRA on a diffusers pipeline: the whole pipeline, adapters folded in


def run(overrides: list[str]) -> Path:
    command, _ = parse_command(overrides, ExportCommand, "export")
    model, run_dir = load_run(command.run)
    if "checkpoint" not in model.origin:
        raise ConfigError(f"{command.run} is already a folder to share (an export or a diffusers pipeline); "
                          "copy it as it is")
    out = Path(command.out) if command.out else Path("exports") / run_dir.root.name
    grids = sorted(run_dir.samples.glob("step_*.png"))
    export_run(model, out, grids[-1] if grids else None, command.merge)
    megabytes = sum(path.stat().st_size for path in out.rglob("*") if path.is_file()) / 1e6
    program = __package__.split(".")[0]
    print(f"exported step {model.origin['step']} of {run_dir.root} to {out} ({megabytes:.1f} MB)\n"
          f"use it anywhere with: {program} sample run={out}")
    return out
