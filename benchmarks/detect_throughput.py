"""ViTDet throughput at the configs' input size: training and inference images/s, fp32 and bf16, and the
inference time split between backbone (ViT), FPN, RPN and RoI heads.

    python benchmarks/detect_throughput.py                       # paper ViT-B (800 px) and tiny configs
    python benchmarks/detect_throughput.py --configs vitdet_b_sardet100k --batch 4 --steps 10
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import defaultdict

import torch

from sarmae.config import load_config
from sarmae.experiments.throughput import detection_speed, random_detection_batch
from sarmae.infer.detector_io import inference_model, native_bf16
from sarmae.models.vitdet import build_detector, keep_boxes_float32
from sarmae.precision import benchmark_precisions


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class StageTimer:
    """Forward hooks that time the detector's stages (synchronising on CUDA)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.device, self.times = device, defaultdict(float)
        stages = {"backbone (ViT)": model.backbone.vit, "FPN": model.backbone, "RPN": model.rpn,
                  "RoI heads": model.roi_heads}
        for name, module in stages.items():
            module.register_forward_pre_hook(lambda m, a, n=name: self._start(n))
            module.register_forward_hook(lambda m, a, o, n=name: self._stop(n))
        self._t0: dict[str, float] = {}

    def _start(self, name: str) -> None:
        sync(self.device)
        self._t0[name] = time.perf_counter()

    def _stop(self, name: str) -> None:
        sync(self.device)
        self.times[name] += time.perf_counter() - self._t0[name]

    def split(self) -> dict[str, float]:
        times = dict(self.times)
        times["FPN"] -= times.get("backbone (ViT)", 0.0)  # the FPN module wraps the ViT
        return times


def measure(config: str, precision: str, batch: int, steps: int, device: torch.device, train: bool = True) -> dict:
    model_cfg = load_config(config)["model"]
    size = int(model_cfg.get("img_size", 800))
    train = detection_speed(model_cfg, batch, steps, device, precision, train=True) if train else float("nan")
    infer = detection_speed(model_cfg, batch, steps, device, precision, train=False)
    model = build_detector(model_cfg, num_classes=7)
    keep_boxes_float32(model)
    copy = precision == "bf16" and native_bf16(device)  # the split of the model the infer column timed
    model = inference_model(model, device, "bf16-mixed") if copy else model.to(device).eval()
    images, _ = random_detection_batch(batch, size, device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" and not copy \
        else contextlib.nullcontext()
    with torch.no_grad(), amp:
        model(images)
        timer = StageTimer(model, device)
        for _ in range(steps):
            model(images)
    times = timer.split()
    total = sum(times.values())
    return {"size": size, "train": train, "infer": infer, "split": {k: v / total for k, v in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["vitdet_b_sardet100k", "vitdet_tiny"])
    parser.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "bf16"],
                        help="default: fp32, and bf16 where trainer.precision=auto trains in bf16 (native bf16)")
    parser.add_argument("--batch", type=int, default=None, help="default: 1 on CPU, the config's batch on GPU")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--inference-only", action="store_true", help="skip training steps (a minute per ViT-B "
                        "image on a small CPU)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.precisions = args.precisions or benchmark_precisions(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}, torch {torch.__version__}")
    print(f"{'config':<22} {'size':>5} {'prec':<5} {'batch':>5} {'train img/s':>12} {'infer img/s':>12}  "
          "inference split")
    for config in args.configs:
        batch = args.batch or (int(load_config(config)["batch_size"]) if device.type == "cuda" else 1)
        for precision in args.precisions:
            r = measure(config, precision, batch, args.steps, device, train=not args.inference_only)
            split = ", ".join(f"{k} {v:.0%}" for k, v in r["split"].items())
            print(f"{config:<22} {r['size']:>5} {precision:<5} {batch:>5} {r['train']:>12.2f} {r['infer']:>12.2f}  "
                  f"{split}", flush=True)


if __name__ == "__main__":
    main()
