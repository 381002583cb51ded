#!/bin/bash
# The prepared GPU session (one `run` call on the lent H100/H200; ~8 min of its 15-min budget).
#
#   here, once:  streamcad train pack ... is NOT needed; what travels (git-ignored, name them in carry):
#     .whl/  pyzmq + msgspec wheels for the device's Python 3.12 (see /work/.library/device/README.md)
#     .gpu/  frames.npz (real frames for the gate: `streamcad train pack --out .gpu/frames.npz
#            --size 160`, 39 MB; the working tree + carry must stay under 64 MiB), shipped-classifier.pt
#            (the shipped model's checkpoint, runs/ship/finetune/classifier.pt; runs/ is not
#            committed: `streamcad train ship` recreates it, ~34 min on the 2-core CPU)
#   run:  bash benchmarks/gpu_session.sh        (carry [".whl", ".gpu"], timeout_s 600)
#
# 1. benchmarks/gpu_check.py: the torch CUDA backend (FP32 / FP16 / FP16 + CUDA graph) gated
#    against ONNX Runtime FP32 on real frames with the SHIPPED weights, and timed per model size.
# 2. streamcad bench --gpu: the real pipeline end to end (replay source, subscriber process) with
#    torch-CUDA FP32 / FP16 / FP16 + CUDA graph at 30 and 60 fps (60 fps: 1,000 frames x 3 runs)
#    and as fast as possible, pipelined vs naive; inference alone per model size.
# Results land in $OUT (gpu_check-*.json, gpu.json + PNGs); the summary table prints last.
# The copy on the device has no .git: the commit is passed in STREAMCAD_GIT_COMMIT.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:?OUT must name the output folder}
start=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/pyzmq-*.whl .whl/msgspec-*.whl || exit 3
export PYTHONPATH="$PYTHONPATH:/tmp/site"
python3 - <<'EOF' || exit 2
import torch
if not torch.cuda.is_available():
    raise SystemExit("gpu_session: no CUDA device here; this script is for the lent GPU machine")
print("torch", torch.__version__, torch.cuda.get_device_name(0))
EOF
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
ck=.gpu/shipped-classifier.pt
[ -f "$ck" ] || { echo "gpu_session: $ck missing (copy runs/ship/finetune/classifier.pt)"; exit 2; }
timeout 200 python3 benchmarks/gpu_check.py --checkpoint "$ck" --onnx engines/models/default.onnx \
  --data-npz .gpu/frames.npz --models tiny,small --out "$OUT" 2>&1 | tail -n 25
echo "gpu_check rc=${PIPESTATUS[0]} at $(( $(date +%s) - start )) s"
left=$(( 560 - ($(date +%s) - start) ))
timeout "$left" python3 -m streamcad.cli bench --gpu --sources replay --models tiny,small,resnet18 \
  --out "$OUT" --name gpu --cache /tmp/bench-models 2>&1 | grep -v "^INFO" | tail -n 40
echo "bench rc=${PIPESTATUS[0]} total $(( $(date +%s) - start )) s"
