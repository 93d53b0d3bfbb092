#!/bin/bash
# GPU check of a baked project: bf16 / fp16 / fp32 training with manual optimisation, FID during
# training, resume, sampling and `evaluate` on CUDA. Results (logs, summary.txt) go to $OUT.
#
# Prepare here (the GPU machine has no cookiecutter and no omegaconf, and no network):
#   .venv/bin/cookiecutter . --no-input --output-dir gpu dataset=image_folder image_size=32 hardware=h100
#   cp benchmarks/gpu_features.py gpu/tiny_features.py
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl omegaconf==2.4.0
# then run `bash benchmarks/gpu_check.sh` there from the repository root, carrying gpu and .whl.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/gpu/diffusion-lab/src:$PWD/gpu PYTHONUNBUFFERED=1
cd gpu/diffusion-lab
nvidia-smi --query-gpu=name,driver_version --format=csv | tee $OUT/gpu.txt
python3 -c "import torch, lightning, torchmetrics; print('torch', torch.__version__, 'lightning', lightning.__version__, 'torchmetrics', torchmetrics.__version__)" | tee -a $OUT/gpu.txt
python3 -c "import torch; torch.save(torch.randint(0, 256, (20000, 3, 32, 32), dtype=torch.uint8), '/tmp/data.pt')"
P="python3 -m diffusion_lab"
COMMON="data.name=tensor_file data.root=/tmp/data.pt data.image_size=32 data.channels=3 model.conditional=false logger=csv trainer.sample_every_n_steps=100000 trainer.val_every_n_steps=100000 evaluation.extractor=custom evaluation.extractor_module=tiny_features:Features evaluation.samples=2000 evaluation.batch_size=500 evaluation.kid_subset_size=500 data.val_fraction=0"
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
run() { local name=$1; shift; local start=$(date +%s.%N); $P train name=$name $COMMON "$@" > $OUT/$name.log 2>&1; local rc=$?; echo "$name $* rc=$rc seconds=$(elapsed $start)" | tee -a $OUT/summary.txt; }
run bf16_200 preset=h100 trainer.max_steps=200
run bf16_600 preset=h100 trainer.max_steps=600 evaluation.every_n_steps=300
run fp16 preset=colab-t4 trainer.max_steps=300
run fp32 preset=h100 trainer.precision=32-true trainer.max_steps=300
run half preset=h100 trainer.precision=32-true trainer.max_steps=150
run half preset=h100 trainer.precision=32-true trainer.max_steps=300
python3 - <<'PY' | tee -a $OUT/summary.txt
import csv, glob, torch
def checkpoint(name): return torch.load(f"runs/{name}/checkpoints/last.ckpt", weights_only=True, map_location="cpu")
a, b = checkpoint("fp32"), checkpoint("half")
d = max((a["state_dict"][k].float() - b["state_dict"][k].float()).abs().max().item() for k in a["state_dict"])
print("resume 150+150 vs 300 straight (fp32): steps", a["global_step"], b["global_step"], "max |diff| weights+EMA", d)
for name in ["bf16_600", "fp16", "fp32"]:
    losses = [float(r["train/loss"]) for f in glob.glob(f"runs/{name}/csv/*/metrics.csv") for r in csv.DictReader(open(f)) if r.get("train/loss")]
    s = checkpoint(name)
    print(name, "step", s["global_step"], "loss first/last", losses[:1], losses[-3:],
          "weights finite", all(torch.isfinite(v.float()).all() for v in s["state_dict"].values()))
PY
start=$(date +%s.%N); $P sample run=runs/bf16_600 n=2000 batch_size=1000 steps=20 sampler=dpmpp_2m device=cuda > $OUT/sample.log 2>&1; echo "sample 2000 at 20 NFE rc=$? seconds=$(elapsed $start)" | tee -a $OUT/summary.txt
$P evaluate run=runs/bf16_600 extractor=custom extractor_module=tiny_features:Features samples=4000 batch_size=1000 kid_subset_size=500 seeds=2 sweep=true sweep_samplers=[euler,dpmpp_2m] sweep_steps=[5,10] > $OUT/evaluate.log 2>&1; echo "evaluate rc=$?" | tee -a $OUT/summary.txt
$P train name=term preset=h100 $COMMON trainer.max_steps=100000 > $OUT/term.log 2>&1 &
pid=$!; sleep 30; kill -TERM $pid; wait $pid; echo "sigterm rc=$?" | tee -a $OUT/summary.txt; grep STOPPED $OUT/term.log | tee -a $OUT/summary.txt
