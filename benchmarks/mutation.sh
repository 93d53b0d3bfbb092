#!/usr/bin/env bash
# Mutation testing of the core of a freshly baked default project (mutmut, configured in the
# project's pyproject.toml: the diffusion core, the tasks, evaluation, the training module, Model,
# the codecs, the networks, the data pipeline, the configuration and the run folder, against the tests
# that reach them). Writes
# benchmarks/results/mutation.txt: every mutant that no test killed, with its diff;
# benchmarks/mutation.md says why each is left. Hours on a 2-core CPU.
#
#     bash benchmarks/mutation.sh [mutant names ...]      # all, or only the ones named
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
work="$(mktemp -d)"
"$python" -m cookiecutter "$repo" --no-input --output-dir "$work" >/dev/null
cd "$work/diffusion-lab"
git init -q && git add -A && git -c user.name=m -c user.email=m@m commit -qm baked    # mutmut reads git
PYTHONPATH=src "$python" -m mutmut run --max-children 1 "$@" > mutmut.log 2>&1 || true
{
    echo "# mutmut $("$python" -m pip show mutmut | sed -n 's/^Version: //p'), torch $("$python" -c 'import torch; print(torch.__version__)'), $(date -u +%F)"
    tail -c 200 mutmut.log | tr '\r' '\n' | tail -1
    for mutant in $(PYTHONPATH=src "$python" -m mutmut results 2>/dev/null | awk -F': ' '$2 ~ /survived|timeout|suspicious|no tests/ {print $1}'); do
        echo
        PYTHONPATH=src "$python" -m mutmut show "$mutant" 2>/dev/null
    done
} > "$repo/benchmarks/results/mutation.txt"
echo "survivors: $repo/benchmarks/results/mutation.txt (the baked project and its mutants: $work)"
