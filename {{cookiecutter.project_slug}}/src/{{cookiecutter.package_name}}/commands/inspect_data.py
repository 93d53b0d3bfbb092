"""``inspect-data``: report on the data ``train`` would use, with a preview picture."""
from __future__ import annotations

from pathlib import Path

from ..config import load_config
from ..data.inspect import data_report
from ..runs import Run
from ..visualize import save_image_grid, save_labelled_grid, save_samples_picture, save_scatter

USAGE = """\
inspect-data [key=value ...]
                          report on the configured data (counts, sizes, modes, unreadable files,
                          duplicates, classes; for sequences and sets their features and sizes) with
                          warnings, and a preview picture in runs/<name>/inspect/"""


def run(overrides: list[str]) -> Path:
    cfg = load_config(overrides)
    out = Run.named(cfg.name).inspect
    print(write_report(cfg.data, out))
    return out


def write_report(data_cfg, out: Path) -> str:
    """Write ``preview.png`` and ``report.txt`` into ``out``; return the report."""
    report, preview, class_names, kind = data_report(data_cfg)
    if preview is not None and class_names:
        columns = [""] * (len(preview) // len(class_names))
        picture = save_labelled_grid(preview, class_names, columns, out / "preview.png", "training data by class")
        report += f"\npreview: {picture}"
    elif preview is not None and preview.ndim == 4:
        report += f"\npreview: {save_image_grid(preview, out / 'preview.png')}"
    elif kind in ("sequence", "set"):
        report += f"\npreview: {save_samples_picture(preview, out / 'preview.png', 'training data', kind=kind)}"
    elif preview is not None:
        report += f"\npreview: {save_scatter(preview, out / 'preview.png', 'training data')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.txt").write_text(report + "\n")
    return report
