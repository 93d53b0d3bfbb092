#!/bin/bash
# benchmarks/gpu_train.py on a lent GPU machine (no network there), results under $OUT.
#
# Prepare here, in the repository root:
#   .venv/bin/cookiecutter . --no-input --output-dir gpu dataset=cifar10 hardware=h100
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
#       omegaconf==2.4.0 diffusers==0.42.1 smalldiffusion==0.5.0 accelerate huggingface-hub safetensors \
#       regex einops psutil httpx2 httpcore2 anyio h11 idna hf-xet truststore fsspec filelock
# then run, carrying gpu and .whl (one call fits in about ten minutes; compiled kernels stay
# cached on a warm machine for the second):
#   bash benchmarks/gpu_train.sh --sizes 32
#   bash benchmarks/gpu_train.sh --sizes 64 --parts train
# and where the compiled step's time goes (issue 34; the tables land in $OUT/profile_*.txt):
#   bash benchmarks/gpu_train.sh --sizes 32 64 --batches 512 --parts profile
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 benchmarks/gpu_train.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_train.log"
