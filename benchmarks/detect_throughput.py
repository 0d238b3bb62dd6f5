"""ViTDet throughput at the configs' input size: training and inference images/s, fp32 and bf16, and the
inference time split between backbone (ViT), FPN, RPN and RoI heads.

    python benchmarks/detect_throughput.py                       # paper ViT-B (800 px) and tiny configs
    python benchmarks/detect_throughput.py --configs vitdet_b_sardet100k --batch 4 --steps 10
    python benchmarks/detect_throughput.py --inference-only --runtimes onnx onnx-int8 openvino openvino-int8

``--isa avx2`` runs the whole benchmark as on a CPU without AVX-512 (no native bf16, no VNNI): the process is
restarted with oneDNN, MKL and ATen capped to AVX2 (``ONEDNN_MAX_CPU_ISA``, ``MKL_ENABLE_INSTRUCTIONS``,
``ATEN_CPU_CAPABILITY``): PyTorch obeys them, OpenVINO's oneDNN kernels do, but the MLAS matrix products OpenVINO
uses for some float32 linear layers pick their kernels from CPUID, as ONNX Runtime does, so its rows are left out
(bf16 is then emulated: ``--precisions fp32 bf16`` times it anyway). Same cores and clock: a stand-in for an
AVX2-only CPU, not a measurement of one.

``--runtimes`` adds rows for the exported detector (``sarmae export``, needs ``sarmae[deploy]``): ONNX Runtime and
OpenVINO, float32 and INT8 (calibrated on random images: the speed is what is measured here, not the accuracy),
one image at a time, seconds per image beside PyTorch's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from sarmae.config import load_config
from sarmae.experiments.throughput import detection_speed, random_detection_batch
from sarmae.infer.detector_io import Detector, inference_model, native_bf16
from sarmae.models.vitdet import build_detector, keep_boxes_float32
from sarmae.precision import benchmark_precisions, cpu_features


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


RUNTIMES = ("onnx", "onnx-int8", "openvino", "openvino-int8")


def runtime_speeds(config: str, runtimes: list[str], steps: int) -> dict[str, float]:
    """Seconds per image of the config's detector (random weights) exported for each of ``runtimes``."""
    import numpy as np

    from sarmae.infer.detector_io import load_detector
    from sarmae.infer.export import export_model, metadata_of

    detector = untrained_detector(config)
    size = int(detector.cfg["model"]["img_size"])
    rng = np.random.default_rng(0)
    calibration = [rng.random((1, 3, size, size), dtype=np.float32) for _ in range(4)]
    image = torch.from_numpy(calibration[0][0])
    speeds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in runtimes:
            fmt, _, int8 = runtime.partition("-")
            path = Path(tmp) / f"{runtime}{'.onnx' if fmt == 'onnx' else '.xml'}"
            export_model(detector, path, fmt, calibration if int8 else [], metadata_of(detector, Path(config)))
            model = load_detector(path).model
            model([image])  # warm-up (OpenVINO compiles its kernels for the shape on first use)
            start = time.perf_counter()
            for _ in range(steps):
                model([image])
            speeds[runtime] = (time.perf_counter() - start) / steps
    return speeds


def untrained_detector(config: str) -> Detector:
    """The config's detector with random weights, as a checkpoint of it would load (7 classes)."""
    from sarmae.train.finetune import finetune_config

    classes = {"names": [f"c{i}" for i in range(6)], "label_to_cat_id": {i + 1: i + 1 for i in range(6)}}
    return Detector.build(finetune_config(load_config(config)), classes)


ISA_CAPS = {"avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}


def capped_to(isa: str | None) -> None:
    """Restart this process with the libraries capped to ``isa`` (they read the caps once, when loaded)."""
    caps = ISA_CAPS.get(isa or "", {})
    if caps and any(os.environ.get(k) != v for k, v in caps.items()):
        os.execve(sys.executable, sys.orig_argv, {**os.environ, **caps})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["vitdet_b_sardet100k", "vitdet_tiny"])
    parser.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "bf16"],
                        help="default: fp32, and bf16 where trainer.precision=auto trains in bf16 (native bf16)")
    parser.add_argument("--batch", type=int, default=None, help="default: 1 on CPU, the config's batch on GPU")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--inference-only", action="store_true", help="skip training steps (a minute per ViT-B "
                        "image on a small CPU)")
    parser.add_argument("--runtimes", nargs="*", default=[], choices=RUNTIMES,
                        help="exported runtimes to time beside PyTorch (sarmae[deploy])")
    parser.add_argument("--isa", choices=sorted(ISA_CAPS), default=None,
                        help="run as on a CPU with only this instruction set (see the module docstring)")
    args = parser.parse_args()
    capped_to(args.isa)
    if args.isa and any(r.startswith("onnx") for r in args.runtimes):
        print("ONNX Runtime rows left out: it picks its kernels from CPUID and cannot be capped")
        args.runtimes = [r for r in args.runtimes if not r.startswith("onnx")]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.precisions = args.precisions or benchmark_precisions(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}, torch {torch.__version__}, CPU features: {' '.join(cpu_features())}")
    print(f"{'config':<22} {'size':>5} {'prec':<5} {'batch':>5} {'train img/s':>12} {'infer img/s':>12}  "
          "inference split")
    for config in args.configs:
        batch = args.batch or (int(load_config(config)["batch_size"]) if device.type == "cuda" else 1)
        for precision in args.precisions:
            r = measure(config, precision, batch, args.steps, device, train=not args.inference_only)
            split = ", ".join(f"{k} {v:.0%}" for k, v in r["split"].items())
            print(f"{config:<22} {r['size']:>5} {precision:<5} {batch:>5} {r['train']:>12.2f} {r['infer']:>12.2f}  "
                  f"{split}  ({1 / r['infer']:.2f} s/img)", flush=True)
        if args.runtimes:
            for runtime, seconds in runtime_speeds(config, args.runtimes, args.steps).items():
                print(f"{config:<22} {'':>5} {runtime:<14} {1:>5} {'':>3} {1 / seconds:>12.2f}  ({seconds:.2f} s/img, "
                      "exported, one image per run)", flush=True)


if __name__ == "__main__":
    main()
