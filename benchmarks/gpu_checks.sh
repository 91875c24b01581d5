#!/usr/bin/env bash
# All GPU checks in one script, for the device machine (torch, lightning and friends preinstalled;
# jsonargparse & co. carried as wheels in .whl/, see ../shared/README.md). Run from the repo root:
#   mkdir -p .whl && cp ../shared/device-wheels/*.whl .whl/     # once, here (.whl/ is ignored)
#   device run, carry [".whl"]:  bash benchmarks/gpu_checks.sh
# Results go to $OUT (or ./gpu-results) for BENCHMARKS.md.
set -uo pipefail
out=$(realpath -m "${OUT:-gpu-results}")
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=$PWD:/tmp/site
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" | tee -a "$out/card.txt"
cd "$(mktemp -d)"
# 1. equivalence on CUDA, fp32, deterministic algorithms (the GPU tests of the suite)
python3 -m pytest -q -p no:cacheprovider -m gpu "$OLDPWD/tests" 2>&1 | tail -5 | tee "$out/gpu_tests.txt"
# 2. the full digits comparison on CUDA
python3 -m project.compare -c "$OLDPWD/configs/digits.yaml" --trainer.accelerator=gpu --trainer.deterministic=true \
    --trainer.enable_progress_bar=false --report "$out/compare_cuda.json" 2>/dev/null | tee "$out/compare_cuda.txt"
