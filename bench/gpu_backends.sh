#!/usr/bin/env bash
# The GPU figures of issue 7, in one run: released widths (random weights), 512x512, fp16, 4 steps, 16-frame
# window, TAESDV; eager-full / eager / compiled (+ CUDA graphs) / onnx (onnxruntime-gpu, if installed) /
# tensorrt (if installed), side by side with the ratios to eager, then one UNet call with and without the
# precomputed constants. Skips with a message where there is no CUDA GPU. Record the output in bench/NOTES.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA GPU visible to torch: skipping the GPU benchmark (CPU figures: python bench/bench_stream.py --backend eager-full eager onnx)"
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import tensorrt; print('tensorrt', tensorrt.__version__)" 2>/dev/null || echo "tensorrt not installed: its row will fall back to compiled"
BACKENDS="${BACKENDS:-eager-full eager compiled onnx tensorrt}"
python bench/bench_stream.py --full --size 512 --dtype "${DTYPE:-fp16}" --device cuda --frames "${FRAMES:-192}" \
  --rounds 3 --backend $BACKENDS
python bench/bench_stream.py --full --size 512 --dtype "${DTYPE:-fp16}" --device cuda --unet-ratio --unet-repeats 5
