"""Bake the default project into a temporary folder and make its package importable, so
benchmarks measure exactly the code users get."""
import sys
import tempfile
from pathlib import Path

from cookiecutter.main import cookiecutter

REPO = Path(__file__).resolve().parents[1]


def import_baked_package(**answers):
    out = Path(tempfile.mkdtemp(prefix="bench-bake-"))
    project = Path(cookiecutter(str(REPO), no_input=True, output_dir=str(out), extra_context=answers))
    sys.path.insert(0, str(project / "src"))
    return project
