"""``illusion``: samples that read as different classes under different views.

* ``kind=anagram`` (visual anagrams): ``views=[identity,rot180] labels=[6,9]`` draws samples
  that are a 6 as they are and a 9 upside down. Views: identity, hflip, vflip, rot90, rot180,
  rot270, transpose, negate, jigsaw (see tasks/illusion.py).
* ``kind=hybrid`` (hybrid images): ``labels=[far,near]`` draws samples that look like ``far``
  when blurred (from a distance) and like ``near`` up close; ``std`` is the blur in pixels.

Writes <run>/illusion/<kind>.png (each sample under each view, or sharp and blurred), a GIF
that turns between the views, and the samples themselves (<kind>.pt, in [-1, 1]).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from omegaconf import MISSING

from ..config import RUN_SECTIONS
from ..devices import pick_device
from ..errors import ConfigError
from ..pixels import to_uint8
from ..runs import open_run, record_made_by
from ..tasks.illusion import Anagram, Hybrid, low_pass, view
from ..visualize import enlarged_grid, save_gif, save_labelled_grid

USAGE = f"""\
illusion run=DIR labels=[a,b] [key=value ...]
                          kind=anagram (views=[identity,rot180]: one image, a label per view) or
                          kind=hybrid (far and near label, std); keys: n, seed, out, device, and
                          any sampling key: {", ".join(RUN_SECTIONS["sampling"])}"""


@dataclass
class IllusionCommand:
    run: str = MISSING
    kind: Literal["anagram", "hybrid"] = "anagram"
    labels: Optional[list[Any]] = None                   # one per view (anagram), or [far, near] (hybrid); or prompts
    views: list[str] = field(default_factory=lambda: ["identity", "rot180"])
    std: float = 1.0                                     # hybrid: the blur separating far from near, in pixels
    n: int = 8
    seed: int = 0
    out: Optional[str] = None                            # default <run>/illusion
    device: str = "auto"


def run(overrides: list[str]) -> Path:
    command, model, run_dir, sampling = open_run(overrides, IllusionCommand, "illusion", ("n",))
    check_request(command, model)
    model.to(pick_device(command.device))
    size = model.data_shape[-1]
    guided = [model.guided(command.n, sampling.guidance, torch.full((command.n,), label)) for label in command.labels]
    if command.kind == "anagram":
        views = [view(name, size) for name in command.views]
        denoiser = Anagram(list(zip(views, guided)))
    else:
        denoiser = Hybrid(*guided, std=command.std)
    generator = torch.Generator().manual_seed(command.seed)
    z = model.generate(denoiser, sampling, shape=(command.n, *model.data_shape), generator=generator, decode=False).x
    x = model.codec.decode(z).cpu()             # a latent model's views act on latents: decode each view
    names = model.class_names
    if command.kind == "anagram":
        rows = [model.codec.decode(v.apply(z)).cpu() for v in views]
        row_labels = [f"{names[label]} ({v.name})" for label, v in zip(command.labels, views)]
    else:
        rows = [x, low_pass(x, command.std)]          # as it is, and its low frequencies alone
        row_labels = [f"near: {names[command.labels[1]]}", f"far: {names[command.labels[0]]} (blurred)"]
    out = run_dir.task("illusion", command.out)
    title = (f"{run_dir.root.name}: {command.kind}, {sampling.sampler}, {sampling.steps} steps, "
             f"guidance {sampling.guidance:g}")
    tiles = to_uint8(torch.cat(rows).clamp(-1, 1))
    columns = [f"#{k}" for k in range(command.n)]
    grid = save_labelled_grid(tiles, row_labels, columns, out / f"{command.kind}.png", title)
    frames = [enlarged_grid(to_uint8(row.clamp(-1, 1)), min(command.n, 8)) for row in rows]
    gif = save_gif(frames, out / f"{command.kind}.gif", seconds_per_frame=1.0, hold=1.0)
    torch.save(x, out / f"{command.kind}.pt")          # the samples as drawn, to check with a classifier
    print(f"{grid}\n{gif}\n{out / f'{command.kind}.pt'}")
    record_made_by(out, "illusion", command, model, sampling)
    return out


def check_request(command, model) -> None:
    if not model.num_classes or len(model.data_shape) != 3:
        raise ConfigError(f"illusion needs a class-conditional image model; {command.run} is not one")
    wanted, which = (len(command.views), "one per view") if command.kind == "anagram" else (2, "far, near")
    if len(command.labels or []) != wanted:
        raise ConfigError(f"kind={command.kind} needs {wanted} labels ({which}), "
                          f"got labels={list(command.labels or [])}")
    if command.kind == "anagram":
        for name in command.views:
            try:
                view(name, model.data_shape[-1])
            except ValueError as error:
                raise ConfigError(f"views: {error}") from None
