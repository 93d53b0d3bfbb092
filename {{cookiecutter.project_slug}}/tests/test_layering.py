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

pytestmark = pytest.mark.once      # known answers that no answer to the template's questions changes

PACKAGE = Path({{ cookiecutter.package_name }}.__file__).parent
NAME = PACKAGE.name

# part of the package -> the parts it may import
ALLOWED = {
    "errors": set(),
    "pixels": set(),
    "sets": set(),
    "kinds": set(),
    "storage": set(),
    "devices": {"errors"},
    "speed": {"devices"},
    "diffusion": set(),
    "models": {"kinds", "sets"},
    "codecs": {"models", "sets", "errors"},
    "tasks": {"diffusion", "pixels"},
    "evaluation": {"pixels", "sets", "storage", "errors"},
    "adapters": {"diffusion", "errors"},
    "data": {"kinds", "pixels", "sets", "storage", "errors"},
    "config": {"diffusion", "models", "errors"},
    "visualize": {"kinds", "pixels", "sets", "diffusion", "models"},
    "model": {"diffusion", "models", "codecs", "kinds", "sets", "devices", "errors"},
    "module": {"model", "diffusion", "devices", "errors"},
    "pairs": {"model", "diffusion", "storage", "errors"},
    "callbacks": {"model", "evaluation", "visualize", "pixels", "storage", "devices"},
    "trainer": {"callbacks", "config", "devices", "errors"},
    "runs": {"model", "models", "codecs", "kinds", "adapters", "diffusion", "config", "storage", "errors"},
    "commands": {"runs", "config", "model", "module", "pairs", "trainer", "data", "tasks", "evaluation", "visualize",
                 "diffusion", "models", "codecs", "kinds", "pixels", "sets", "devices", "speed", "storage", "errors"},
    "cli": {"commands", "errors"},
    "__main__": {"cli"},
}
PURE_TORCH = {"diffusion", "models", "codecs", "model", "devices", "speed", "pixels", "kinds", "sets", "errors",
              "storage", "tasks", "evaluation", "adapters", "pairs"}
FRAMEWORKS = {"lightning", "pytorch_lightning", "omegaconf"}
TRAINING_COMMANDS = {"train", "bench"}       # the only commands that build a LightningModule


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


def test_no_command_imports_another_command():
    """Each command is a leaf: what two commands share lives below them (runs, model, config, ...)."""
    for path in (PACKAGE / "commands").glob("*.py"):
        if path.name != "__init__.py":
            others = {name for name in imports(path) if name.startswith(f"{NAME}.commands.")}
            assert not others, f"{path.name} imports {sorted(others)}"


def source_of(name: str) -> Path | None:
    """The file of the package that the absolute module name ``name`` is, if any."""
    parts = name.split(".")[1:]
    for path in (PACKAGE.joinpath(*parts).with_suffix(".py"), PACKAGE.joinpath(*parts, "__init__.py")):
        if parts and path.is_file():
            return path
    return None


def reachable(path: Path) -> set[Path]:
    """Every file of the package that importing ``path`` imports, directly or not (the packages
    on the way included: importing a.b runs a/__init__.py)."""
    seen, todo = set(), [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for name in imports(current):
            parts = name.split(".")
            for k in range(2, len(parts) + 1):
                found = source_of(".".join(parts[:k]))
                if found is not None:
                    todo.append(found)
    return seen


@pytest.mark.parametrize("command", sorted(path.stem for path in (PACKAGE / "commands").glob("*.py")
                                           if path.stem not in TRAINING_COMMANDS | {"__init__"}))
def test_sampling_the_tasks_evaluate_and_export_never_build_a_lightning_module(command):
    """Only ``train`` and ``bench`` reach module.py (the LightningModule): every other command
    holds a ``Model`` (model.py), and neither it nor anything it imports knows the module."""
    files = {path.relative_to(PACKAGE).as_posix() for path in reachable(PACKAGE / "commands" / f"{command}.py")}
    assert "module.py" not in files and "trainer.py" not in files, sorted(files)


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
