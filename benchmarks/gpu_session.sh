#!/usr/bin/env bash
# One GPU session's measurement for issue 24: the trial section of benchmarks.device at real shapes.
#
#   OUT=/some/folder bash benchmarks/gpu_session.sh      # from the repository root, on the GPU machine
#
# Writes under $OUT: gpu.csv (the GPU, its driver and memory), device_trial.json (benchmarks/trial.py's keys)
# and trial.log. The trial: the ablation space's first point on 469 synthetic clips of 320 x 240 with 7
# frames each (the fewest that the 7 sampled frames allow: quicker to write than the default 10), sampled at
# 7 x 224, ResNet-34, 2 epochs of each stage, the space's batch sizes (32 / 32 / 4) and data settings. Budget:
# about 6 minutes; the command gives up after 8 so that the session can run it once more.
set -euo pipefail
out=${OUT:?set OUT to the folder the results go to}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/gpu.csv" || true
timeout 480 "$py" -m benchmarks.device --only trial --trial-shape real --trial-epochs 2 --trial-clip-frames 7 \
    --backbone resnet34 --json "$out/device_trial.json" 2>&1 | tee "$out/trial.log"
