#!/usr/bin/env bash
# All GPU checks in one script, for any machine with a GPU and the project's dependencies installed.
# Run it from the repository root:
#   bash benchmarks/gpu_checks.sh
# WHEELS_DIR=DIR installs extra wheels from DIR first (offline, into a private target directory), for
# a machine whose image lacks some of the project's dependencies (jsonargparse and friends).
# Results go to $OUT (or ./gpu-results), for BENCHMARKS.md.
set -uo pipefail
repo=$PWD
out=$(realpath -m "${OUT:-gpu-results}")
mkdir -p "$out"
if [ -n "${WHEELS_DIR:-}" ]; then
    site=$(mktemp -d)
    python3 -m pip install -q --no-index --no-deps --target "$site" "$WHEELS_DIR"/*.whl
    export PYTHONPATH=$repo:$site
else
    export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import torch; print(torch.cuda.get_device_name(0))" | tee "$out/card.txt"
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" \
    | tee -a "$out/card.txt"
cd "$(mktemp -d)"
# 1. equivalence on CUDA, fp32, deterministic algorithms (the GPU tests of the suite)
python3 -m pytest -q -p no:cacheprovider -m gpu "$repo/tests" 2>&1 | tail -5 | tee "$out/gpu_tests.txt"
# 2. the full digits comparison on CUDA
python3 -m project.compare -c "$repo/configs/digits.yaml" --trainer.accelerator=gpu --trainer.deterministic=true \
    --trainer.enable_progress_bar=false --report "$out/compare_cuda.json" 2>/dev/null | tee "$out/compare_cuda.txt"
# 3. speed: the three loops side by side on the fast path (fake CIFAR-shaped data: nothing to download),
#    and the small CNN's per-step overhead
cd "$repo"
fake=(--data.dataset=fake --data.fake_size=50000 "--data.fake_image_shape=[3,32,32]")
python3 benchmarks/loop_speed.py -c configs/gpu_fast.yaml "${fake[@]}" --epochs 4 --repeats 2 --skip_lightning_bare \
    --json "$out/loop_speed-resnet18-fast.json" 2>/dev/null | tee "$out/loop_speed-resnet18-fast.txt"
python3 benchmarks/loop_speed.py -c configs/digits.yaml --data.dataset=fake --data.fake_size=20000 \
    "--data.fake_image_shape=[1,28,28]" --data.batch_size=128 --data.device_cache=true --epochs 5 --repeats 3 \
    --json "$out/loop_speed-smallcnn.json" 2>/dev/null | tee "$out/loop_speed-smallcnn.txt"
python3 benchmarks/decode_speed.py --json "$out/decode_speed.json" | tee "$out/decode_speed.txt"
