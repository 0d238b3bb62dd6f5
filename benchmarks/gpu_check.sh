#!/usr/bin/env bash
# One prepared GPU session: end-to-end CUDA runs in bf16 (pretrain -> finetune -> evaluate -> large-scene
# predict) and the three throughput benchmarks. Run from the repository root on a CUDA machine:
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# Wheels for packages the machine lacks may be put in .whl/ (installed to /tmp/site first).
set -uo pipefail
OUT_DIR=${1:-${OUT:-/tmp}/gpu_check}
mkdir -p "$OUT_DIR"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
SARMAE="python3 -m sarmae.cli"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision, timm, lightning; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'lightning', lightning.__version__)"

step() { echo "== $*"; local t0=$SECONDS; "$@" 2>&1 | grep -vE "it/s\]|s/it\]" | tail -6; echo "   (${PIPESTATUS[0]}, $((SECONDS - t0)) s)"; }
D=$OUT_DIR/synth
step $SARMAE data synth "$D" --train 64 --val 16 --test 0 --unlabeled 512 --size 256
step $SARMAE pretrain mae_tiny data.images="$D/Unlabeled" epochs=2 batch_size=128 out="$OUT_DIR/pt" \
  model.img_size=256 trainer.precision=bf16-mixed data.workers=8
step $SARMAE finetune vitdet_tiny data.root="$D" epochs=2 batch_size=16 out="$OUT_DIR/ft" init=sar \
  weights="$OUT_DIR/pt/encoder.safetensors" model.pretrain_img_size=256 trainer.precision=bf16-mixed data.workers=8
step $SARMAE evaluate "$OUT_DIR/ft/weights/last.ckpt" --data "$D" --split val --out "$OUT_DIR/ev"
step python3 benchmarks/pretrain_throughput.py --steps 10
step python3 benchmarks/detect_throughput.py --steps 5
step python3 benchmarks/scene_throughput.py --size 4096
