import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_in(project: Path, *args: str, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python args...`` in a baked project with its src/ importable, as its user would
    after ``pip install -e .``; nothing is installed and nothing touches the network."""
    env = {**os.environ, "PYTHONPATH": str(project / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run([sys.executable, *args], cwd=project, env=env, capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"`python {' '.join(args)}` failed in {project}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


# Runs command lines one after another in one interpreter, as a shell would run them one by one
# but without importing torch and Lightning again for each (about ten seconds a time here).
COMMANDS_SCRIPT = """
import shlex, sys
from {package}.cli import main
for line in sys.argv[1:]:
    print('$', line, flush=True)
    if main(shlex.split(line)) != 0:
        sys.exit(f'failed: {{line}}')
"""


def run_commands(project: Path, lines: list[list[str]], package: str = "diffusion_lab", env: dict | None = None,
                 timeout: int = 900) -> str:
    """Run each of ``lines`` (the words after the program's name) with the project's ``main``,
    in order, in one fresh interpreter; fail at the first that fails. Returns what was printed."""
    env = {**os.environ, "PYTHONPATH": str(project / "src"), "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    result = subprocess.run([sys.executable, "-c", COMMANDS_SCRIPT.format(package=package),
                             *(shlex.join(line) for line in lines)], cwd=project, env=env, capture_output=True,
                            text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"commands failed in {project}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


@pytest.fixture
def bake(cookies):
    """Bake with the given answers and return the project folder (failing with the hook's output)."""

    def _bake(**answers) -> Path:
        result = cookies.bake(extra_context=answers)
        assert result.exit_code == 0, f"bake failed for {answers}: {result.exception}"
        return Path(result.project_path)

    return _bake


# No test of the template's own suite may skip: a skip here means this environment lacks what a
# test needs (an optional package unimportable, no .venv to share), and CI must not pass so.
SKIPPED: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped:
        SKIPPED.append(f"{report.nodeid}: {report.longrepr[-1] if isinstance(report.longrepr, tuple) else ''}")


def pytest_sessionfinish(session, exitstatus):
    if SKIPPED and exitstatus == 0:
        print("\nFAILED: skipped tests (none may skip):\n  " + "\n  ".join(SKIPPED))
        session.exitstatus = 1
