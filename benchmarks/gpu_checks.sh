#!/usr/bin/env bash
# All GPU checks in one script, for any machine with a GPU and the project's dependencies installed.
# Run it from the repository root:
#   bash benchmarks/gpu_checks.sh
# WHEELS_DIR=DIR installs extra wheels from DIR first (offline, into a private target directory), for
# a machine whose image lacks some of the project's dependencies (jsonargparse and friends).
# Results go to $OUT (or ./gpu-results), for docs/BENCHMARKS.md.
# Each step has a time cap (seconds in `step`), under 8 minutes in all, so that a GPU machine held
# for 10 minutes brings back every step's output. A step that reaches its cap is stopped and the next
# one runs; loop_speed.py starts no round after --max_minutes and rewrites its JSON after every round.
# ONLY="NAME ..." runs only the steps named (a rerun of some of them inside a short lease).
# $OUT holds six files: log.txt (the card and every step's output), steps.txt (how long each step
# took and how it ended), and the JSON of four steps.
set -uo pipefail
export PYTHONUNBUFFERED=1
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
log=$out/log.txt
python3 -c "import torch; print(torch.cuda.get_device_name(0))" | tee "$log"
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" \
    | tee -a "$log"
step() {  # step NAME CAP_SECONDS COMMAND...: run it under its cap into log.txt, then note its time and exit status
    local name=$1 cap=$2 start=$SECONDS
    shift 2
    [[ -z "${ONLY:-}" || " $ONLY " == *" $name "* ]] || return 0
    echo "=== $name" >>"$log"
    timeout -k 15 "$cap" "$@" >>"$log" 2>&1  # -k: compile workers that outlive the TERM
    local rc=$?
    echo "$name: exit $rc$( ((rc == 124)) && echo " (stopped at its ${cap} s cap)") in $((SECONDS - start)) s" \
        | tee -a "$out/steps.txt"
}
cd "$(mktemp -d)"
# 1. equivalence on CUDA, fp32, deterministic algorithms (the GPU tests of the suite)
step gpu_tests 120 python3 -m pytest -q -p no:cacheprovider --continue-on-collection-errors -m gpu "$repo/tests"
# 2. the full digits comparison on CUDA
step compare 45 python3 -m project.compare -c "$repo/configs/digits.yaml" --trainer.accelerator=gpu \
    --trainer.deterministic=true --trainer.enable_progress_bar=false --report "$out/compare_cuda.json"
# 3. speed: the three loops side by side on the fast path (fake CIFAR-shaped data: nothing to download),
#    and the small CNN's per-step overhead
cd "$repo"
#    51,200 fake images: 40 training and 10 validation batches of 1024, no smaller last batch to compile for
fake=(--data.dataset=fake --data.fake_size=51200 "--data.fake_image_shape=[3,32,32]")
step resnet18_fast 200 python3 benchmarks/loop_speed.py -c configs/gpu_fast.yaml "${fake[@]}" --epochs 4 \
    --repeats 2 --max_minutes 2 --skip_lightning_bare --json "$out/loop_speed-resnet18-fast.json"
#    (the bare loop reads FakeData through a DataLoader, about 10 times slower there: a small set, one round)
step smallcnn 75 python3 benchmarks/loop_speed.py -c configs/digits.yaml --data.dataset=fake --data.fake_size=8000 \
    "--data.fake_image_shape=[1,28,28]" --data.batch_size=128 --data.device_cache=true --epochs 3 --repeats 1 \
    --max_minutes 0.75 --json "$out/loop_speed-smallcnn.json"
step decode 45 python3 benchmarks/decode_speed.py --files 2000 --json "$out/decode_speed.json"
grep -v -e "^Seed set" -e "available:" -e "Tip:" "$log" | tail -n 60
