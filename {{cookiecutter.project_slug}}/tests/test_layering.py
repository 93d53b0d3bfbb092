"""The package's layers import one way (the map is in README.md, "Inside the package"): the
diffusion core, the networks and the leaves know nothing of the rest, so they can be read,
tested and reused alone. Read from the source with ``ast``, so a lazy import inside a
function counts too."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import {{ cookiecutter.package_name }}

PACKAGE = Path({{ cookiecutter.package_name }}.__file__).parent
NAME = PACKAGE.name

# part of the package -> the parts it may import
ALLOWED = {
    "errors": set(),
    "pixels": set(),
    "storage": set(),
    "speed": set(),
    "diffusion": set(),
    "models": set(),
    "tasks": {"diffusion", "pixels"},
    "evaluation": {"pixels", "storage", "errors"},
    "adapters": {"diffusion", "errors"},
    "data": {"pixels", "storage", "errors"},
    "config": {"errors"},
    "visualize": {"pixels", "diffusion"},
    "module": {"diffusion", "models", "adapters", "config", "errors"},
    "callbacks": {"evaluation", "visualize", "diffusion", "pixels", "storage", "speed"},
    "trainer": {"callbacks", "config", "errors"},
    "runs": {"module", "adapters", "config", "errors"},
    "commands": {"runs", "config", "module", "trainer", "data", "tasks", "evaluation", "visualize", "adapters",
                 "diffusion", "pixels", "storage", "speed", "errors"},
    "cli": {"commands", "errors"},
    "__main__": {"cli"},
}
PURE_TORCH = {"diffusion", "models", "pixels", "errors", "storage", "tasks", "evaluation", "adapters"}
FRAMEWORKS = {"lightning", "pytorch_lightning", "omegaconf"}


def part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imports(path: Path) -> set[str]:
    """Absolute names of everything ``path`` imports (relative imports resolved)."""
    module = ".".join((NAME, *path.relative_to(PACKAGE).with_suffix("").parts))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(p for p in (base, node.module) if p)
            names |= {target} | {f"{target}.{alias.name}" for alias in node.names}
    return names


SOURCES = sorted(path for path in PACKAGE.rglob("*.py"))


def test_every_part_of_the_package_has_a_place_in_the_map():
    assert {part_of(path) for path in SOURCES if part_of(path) != "__init__"} <= set(ALLOWED)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_one_way(path):
    part = part_of(path)
    if part == "__init__":
        return
    own = {name.split(".")[1] for name in imports(path) if name.startswith(NAME + ".")}
    assert own - {part} <= ALLOWED[part], f"{part} may import only {sorted(ALLOWED[part])}"
    if part in PURE_TORCH:
        frameworks = {name.split(".")[0] for name in imports(path)} & FRAMEWORKS
        assert not frameworks, f"{part} is pure torch but imports {frameworks}"


def test_the_diffusion_core_imports_without_lightning():
    """Loaded alone, ``diffusion`` and ``models`` do not even pull Lightning in indirectly."""
    code = (f"import sys, {NAME}.diffusion.generate, {NAME}.diffusion.schedules, {NAME}.models; "
            "print(sorted(m for m in ('lightning', 'omegaconf') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
    assert result.stdout.strip() == "[]"


def test_ruff_finds_no_mistakes():
    """ruff with the project's configuration (pyproject.toml): unused imports, undefined names,
    likely bugs. ``pip install -e .[dev]`` brings ruff."""
    pytest.importorskip("ruff")
    project = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(project)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
