"""MAE pre-training throughput (images/s of full training steps) for the paper's ViT-B config and the tiny one.

Prints one line per (config, precision) for the device it runs on. A training step is forward + backward +
AdamW step, exactly what ``sarmae pretrain`` runs per batch (data loading excluded). ``--repeats N`` measures
every row N times in turn and prints the medians, so rows compare fairly on a machine shared with other jobs.

    python benchmarks/pretrain_throughput.py                    # both configs, fp32 and bf16
    python benchmarks/pretrain_throughput.py --configs mae_vitb16_sardet100k --precisions bf16 --unfused-adamw
    python benchmarks/pretrain_throughput.py --configs mae_vitb16_sardet100k --batch 256 --steps 20
"""

from __future__ import annotations

import argparse
import statistics

import torch

from sarmae.config import load_config
from sarmae.experiments.throughput import pretrain_speed
from sarmae.precision import benchmark_precisions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["mae_vitb16_sardet100k", "mae_tiny"])
    parser.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "bf16"],
                        help="default: fp32, and bf16 where trainer.precision=auto trains in bf16 (native bf16)")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on CPU, the config's batch on GPU")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1, help="measure each row this many times, print medians")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (trainer.compile)")
    parser.add_argument("--unfused-adamw", dest="fused_adamw", action="store_false",
                        help="torch.optim.AdamW's default for-each kernels instead of the fused one training uses")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.precisions = args.precisions or benchmark_precisions(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}, torch {torch.__version__}, compile={args.compile}, fused AdamW={args.fused_adamw}")
    rows = []
    for config in args.configs:
        cfg = load_config(config)
        batch = args.batch or (int(cfg["batch_size"]) if device.type == "cuda" else 8)
        rows += [(config, cfg["model"], batch, precision) for precision in args.precisions]
    speeds: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for config, model_cfg, batch, precision in rows:
            speed = pretrain_speed(model_cfg, batch, args.steps, device, precision, args.compile, args.fused_adamw)
            speeds.setdefault((config, precision), []).append(speed)
    print(f"{'config':<26} {'precision':<9} {'batch':>5} {'images/s':>10}")
    for config, _, batch, precision in rows:
        speed = statistics.median(speeds[config, precision])
        print(f"{config:<26} {precision:<9} {batch:>5} {speed:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
