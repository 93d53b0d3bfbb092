"""Record the answers in the project and optionally initialise git (never a commit)."""
import json
import subprocess
import sys
from pathlib import Path

answers = json.loads({{ cookiecutter|tojson|tojson }})
public = {key: value for key, value in answers.items() if not key.startswith("_")}
Path("cookiecutter-answers.json").write_text(json.dumps(public, indent=2) + "\n")

if public["git_init"] == "yes":
    result = subprocess.run(["git", "init", "--quiet"], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"WARNING: git init failed ({result.stderr.strip()}); the project is complete without it")

# The configuration reference in README.md, from the config.yaml just written (standard library only).
subprocess.run([sys.executable, "scripts/config_reference.py"], check=True)
