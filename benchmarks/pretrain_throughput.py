"""MAE pre-training throughput (images/s of full training steps) for the paper's ViT-B config and the tiny one.

Prints one line per (config, precision) for the device it runs on. A training step is forward + backward +
AdamW step, exactly what ``sarmae pretrain`` runs per batch (data loading excluded).

    python benchmarks/pretrain_throughput.py                    # both configs, fp32 and bf16
    python benchmarks/pretrain_throughput.py --configs mae_vitb16_sardet100k --batch 256 --steps 20
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from sarmae.config import load_config
from sarmae.models.mae import build_mae


def measure(config: str, precision: str, batch: int, steps: int, device: torch.device, compile_: bool) -> float:
    cfg = load_config(config)
    model = build_mae(cfg["model"]).to(device).train()
    size = int(cfg["model"].get("img_size", 256))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    forward = torch.compile(model) if compile_ else model
    images = torch.randn(batch, 3, size, size, device=device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    )

    def step() -> None:
        with autocast:
            loss, _, _ = forward(images)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up (allocator, kernels, compile)
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["mae_vitb16_sardet100k", "mae_tiny"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on CPU, the config's batch on GPU")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}, torch {torch.__version__}")
    print(f"{'config':<26} {'precision':<9} {'batch':>5} {'images/s':>10}")
    for config in args.configs:
        batch = args.batch or (int(load_config(config)["batch_size"]) if device.type == "cuda" else 8)
        for precision in args.precisions:
            speed = measure(config, precision, batch, args.steps, device, args.compile)
            print(f"{config:<26} {precision:<9} {batch:>5} {speed:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
