"""Compare a voxel field recovered by ``score-distill generator=voxels`` with the true shape of
make_views.py: the occupancy IoU (voxels that stop more than a tenth of a ray crossing them, the
renderer's ``occupied``; also at other shares, in iou_at), and
renders from eight held-out views (between the training views' centres) side by side, with
their PSNR. Writes comparison.png and comparison.json beside the recovered field.

    python compare.py runs/views/score_distill/sds-voxels/result.pt
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, "src")
PACKAGE = next(Path("src").glob("*/tasks/render.py")).parts[1]
render = importlib.import_module(f"{PACKAGE}.tasks.render")


def on_grid(density: torch.Tensor, resolution: int) -> torch.Tensor:
    """The density resampled to the truth's grid, whatever the field's own resolution."""
    if density.shape[0] == resolution:
        return density
    return F.interpolate(density[None, None], size=(resolution,) * 3, mode="trilinear", align_corners=True)[0, 0]


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a & b).sum().item() / max(1, (a | b).sum().item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("field", help="result.pt of score-distill generator=voxels")
    parser.add_argument("--truth", default="truth.pt")
    parser.add_argument("--elevation", type=float, default=15.0)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    field, truth = torch.load(args.field), torch.load(args.truth)
    true_occupied = render.occupied(truth["density"])
    density = on_grid(field["density"], truth["density"].shape[0])
    found = render.occupied(density)
    azimuths = torch.arange(8) * 45.0 + 22.5
    elevation = torch.full_like(azimuths, args.elevation)
    true_views = render.render_volume(truth["density"], truth["colour"], azimuths, elevation, args.size)
    views = render.render_volume(field["density"], field["colour"], azimuths, elevation, args.size)
    mse = (views - true_views).square().mean().item()
    report = {"iou": round(iou(found, true_occupied), 3), "psnr_held_out_views": round(10 * math.log10(1 / mse), 2),
              "occupied_voxels": int(found.sum()), "true_voxels": int(true_occupied.sum()),
              "iou_at": {share: round(iou(render.occupied(density, share), true_occupied), 3)
                         for share in (0.05, 0.1, 0.2, 0.5)}}
    out = Path(args.field).parent
    rows = torch.cat([torch.cat(list(true_views), 2), torch.cat(list(views), 2)], 1)
    Image.fromarray((rows.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()).save(out / "comparison.png")
    (out / "comparison.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report), f"\n{out / 'comparison.png'} (top: the true shape, bottom: the recovered one)")


if __name__ == "__main__":
    main()
