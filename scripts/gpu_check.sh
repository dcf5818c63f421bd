#!/usr/bin/env bash
# On a machine with CUDA: a short training on the GPU (bf16-mixed, the data on the device),
# vaelab-eval on the GPU, and make bench's lockstep rows on CUDA (into docs/benchmarks.md's GPU
# block), ending with the images per second of (a) and (b') and vaelab's per-step overhead.
# Without CUDA it says so in one line and exits 0.
#   scripts/gpu_check.sh            (or: make gpu-check)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device (torch.cuda.is_available() is False): nothing to check here"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export WANDB_MODE=${WANDB_MODE:-offline}
echo "gpu_check: training 2 epochs on the GPU, bf16-mixed, data on the device"
"$PY" train.py trainer=gpu trainer.precision=bf16-mixed trainer.max_epochs=2 data.data_on_device=true \
  logger=csv hydra.run.dir="$work/run"
echo "gpu_check: vaelab-eval on the GPU"
"$PY" -m vaelab.evaluate ckpt="$work/run/checkpoints/last.ckpt" device=cuda k=1000 limit_images=2000 \
  wandb=false out="$work/eval.json"
echo "gpu_check: make bench's lockstep rows on CUDA"
"$PY" scripts/bench.py --device cuda --doc docs/benchmarks.md
"$PY" - <<'PYTHON'
import json
step = json.load(open("logs/bench/bench-cuda.json"))["lockstep"]
print(f"gpu_check: (a) {step['a']:,.0f} images/s, (b') {step['b_fused']:,.0f} images/s, "
      f"vaelab's overhead {step['overhead_ms_per_step']:.2f} ms per step")
PYTHON
