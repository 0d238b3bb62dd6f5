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
from sarmae.models.vitdet import build_detector


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def fake_batch(batch: int, size: int, device: torch.device) -> tuple[list[torch.Tensor], list[dict]]:
    """Random images with 5 random boxes each (labels 1..6)."""
    images = [torch.rand(3, size, size, device=device) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        xy = torch.rand(5, 2, device=device) * size * 0.8
        wh = 8 + torch.rand(5, 2, device=device) * size * 0.15
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(1, 7, (5,), device=device)})
    return images, targets


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


def measure(config: str, precision: str, batch: int, steps: int, device: torch.device) -> dict:
    cfg = load_config(config)
    size = int(cfg["model"].get("img_size", 800))
    model = build_detector(cfg["model"], num_classes=7).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    images, targets = fake_batch(batch, size, device)

    def train_step() -> None:
        with amp:
            loss = sum(model(images, targets).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    train_step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    sync(device)
    train_speed = batch * steps / (time.perf_counter() - start)

    model.eval()
    with torch.no_grad(), amp:
        model(images)
        timer = StageTimer(model, device)
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            model(images)
        sync(device)
    infer_speed = batch * steps / (time.perf_counter() - start)
    total = sum(timer.split().values())
    split = {name: value / total for name, value in timer.split().items()}
    return {"size": size, "train": train_speed, "infer": infer_speed, "split": split}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["vitdet_b_sardet100k", "vitdet_tiny"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=None, help="default: 1 on CPU, the config's batch on GPU")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}, torch {torch.__version__}")
    print(f"{'config':<22} {'size':>5} {'prec':<5} {'batch':>5} {'train img/s':>12} {'infer img/s':>12}  "
          "inference split")
    for config in args.configs:
        batch = args.batch or (int(load_config(config)["batch_size"]) if device.type == "cuda" else 1)
        for precision in args.precisions:
            r = measure(config, precision, batch, args.steps, device)
            split = ", ".join(f"{k} {v:.0%}" for k, v in r["split"].items())
            print(f"{config:<22} {r['size']:>5} {precision:<5} {batch:>5} {r['train']:>12.2f} {r['infer']:>12.2f}  "
                  f"{split}", flush=True)


if __name__ == "__main__":
    main()
