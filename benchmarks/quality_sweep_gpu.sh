#!/bin/bash
# Ablations of the CPU recipe at the number of images a 2-core CPU sees in its budget, trained on
# a lent GPU: `quality_per_compute.py --device cuda`, the same float32 recipe, only faster, one
# process per recipe and JOBS of them at once. Rows: $OUT/sweep.jsonl, gathered every few seconds, so a
# call that runs out of time keeps what finished (logs and grids: tar files at the end).
# Each line of the list file is "IMAGES RECIPE" (a recipe as --recipes takes it: name+key=value+...).
# The 0.31M-parameter U-Net leaves an H100 waiting on kernel launches: 13 recipes of 2000 steps at
# once took about 6 minutes (about 480 img/s each), 5 at once about 2.5. Size the list to the lease.
#
# Prepare here, in the repository root (the GPU machine has no cookiecutter, no omegaconf, no network):
#   .venv/bin/cookiecutter . --no-input --output-dir gpu dataset=mnist      # the CPU bake, as on the CPU
#   mkdir -p gpu/mnist && cp ../shared/data/mnist/*.gz gpu/mnist/
#   .venv/bin/python -c "import sys; from pathlib import Path; sys.path.insert(0, 'benchmarks'); \
#       import quality_per_compute as q; q.trained_scorer(*q.load_mnist(), Path('gpu/scorer.pt'))"
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       omegaconf==2.4.0 antlr4-python3-runtime==4.13.2
# then run there, carrying gpu and .whl:  bash benchmarks/quality_sweep_gpu.sh benchmarks/quality_sweep.txt
set -u
list=$1; jobs=${JOBS:-8}; samplers=${SAMPLERS:-dpmpp_2m:10,dpmpp_2m:20}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
mkdir -p /tmp/rows /tmp/logs
one() {
    local images=$1 recipe=$2 tag
    tag=$(echo "$recipe-$images" | tr -c 'A-Za-z0-9.=_\n-' _)
    timeout "${LIMIT:-420}" python3 benchmarks/quality_per_compute.py --device cuda --images "$images" \
        --recipes "$recipe" --samplers "$samplers" --project gpu/diffusion-lab --scorer gpu/scorer.pt \
        --data gpu/mnist --out "/tmp/rows/$tag.jsonl" > "/tmp/logs/$tag.log" 2>&1
    echo "$(date +%T) rc=$? $images $recipe"
}
export -f one; export samplers
gather() { cat /tmp/rows/*.jsonl > "$OUT/sweep.jsonl.part" 2>/dev/null; mv "$OUT/sweep.jsonl.part" "$OUT/sweep.jsonl"; }
(while sleep 5; do gather; done) &
gatherer=$!
start=$(date +%s)
grep -v '^#' "$list" | grep . | xargs -P "$jobs" -L 1 bash -c 'one "$0" "$1"'
echo "all done in $(( $(date +%s) - start )) s"
kill $gatherer; gather
tar czf "$OUT/logs.tgz" -C /tmp logs
tar czf "$OUT/grids.tgz" -C /tmp/rows $(cd /tmp/rows && ls *.png)
python3 - "$OUT/sweep.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"{r['recipe']:58s} {r['images_seen']:>7} {r['sampler']}:{r['nfe']:<3} fid {r['fid']:6.2f} "
          f"confident {r['confident']:.3f} train {r['train_seconds']:.0f}s")
PY
