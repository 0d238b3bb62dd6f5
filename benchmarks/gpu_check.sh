#!/usr/bin/env bash
# One prepared GPU session (< 10 minutes on an H100-class GPU): end-to-end CUDA runs in bf16 (pack -> pretrain from
# shards on every GPU -> finetune -> evaluate), then the throughput benchmarks: MAE and ViTDet training img/s at the
# paper's per-GPU batch sizes (goals: MAE >= 8,000 img/s bf16, ViTDet-B training >= 30 img/s at 800^2), ViTDet
# inference, sliced large scenes and the data loader per core. Run from the repository root on a CUDA machine:
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
step $SARMAE data pack "$D/Unlabeled" "$OUT_DIR/shards"
step $SARMAE pretrain mae_tiny data.shards="$OUT_DIR/shards" epochs=2 batch_size=128 out="$OUT_DIR/pt" \
  model.img_size=256 trainer.precision=bf16-mixed data.workers=8 trainer.devices=-1
step $SARMAE finetune vitdet_tiny data.root="$D" epochs=2 batch_size=16 out="$OUT_DIR/ft" init=sar \
  weights="$OUT_DIR/pt/encoder.safetensors" model.pretrain_img_size=256 trainer.precision=bf16-mixed data.workers=8
step $SARMAE evaluate "$OUT_DIR/ft/weights/last.ckpt" --data "$D" --split val --out "$OUT_DIR/ev"
step python3 benchmarks/pretrain_throughput.py --steps 10 --configs mae_vitb16_sardet100k
step python3 benchmarks/pretrain_throughput.py --steps 10 --configs mae_vitb16_sardet100k --compile --precisions bf16
step python3 benchmarks/detect_throughput.py --steps 5 --configs vitdet_b_sardet100k
step python3 benchmarks/scene_throughput.py --size 4096
step python3 benchmarks/data_throughput.py --count 3 --reps 2
