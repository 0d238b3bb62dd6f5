"""Measured training speed of a config on this device, from a few steps on random data.

Used by ``sarmae reproduce`` to estimate GPU-hours before it starts, and by the scripts in ``benchmarks/``.
Data loading is excluded: these numbers are the model's ceiling.
"""

from __future__ import annotations

import contextlib
import time

import torch


def _autocast(device: torch.device, precision: str):
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(step, steps: int, device: torch.device) -> float:
    step()  # warm-up: allocator, kernels, compile
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def random_detection_batch(batch: int, size: int, device: torch.device, num_classes: int = 6):
    """Random images with 5 random boxes each (labels 1..num_classes)."""
    images = [torch.rand(3, size, size, device=device) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        xy = torch.rand(5, 2, device=device) * size * 0.8
        wh = 8 + torch.rand(5, 2, device=device) * size * 0.15
        labels = torch.randint(1, num_classes + 1, (5,), device=device)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": labels})
    return images, targets


def pretrain_speed(model_cfg: dict, batch: int, steps: int, device: torch.device, precision: str = "32",
                   compile_model: bool = False, fused_adamw: bool = True) -> float:
    """Images/s of MAE training steps, the step ``sarmae pretrain`` runs: forward under autocast, backward, AdamW.

    The optimiser is the pre-training one (:func:`~sarmae.train.pretrain.param_groups`: decay / no-decay groups,
    frozen position embeddings left out, betas (0.9, 0.95)); gradients are dropped with ``set_to_none`` as
    Lightning does. ``compile_model`` is ``trainer.compile`` (``torch.compile(dynamic=False)``, compile time
    excluded: the warm-up step pays it); ``fused_adamw`` (on, as in training: ``train.runs.adamw``) runs one kernel
    per parameter group instead of a dozen element-wise passes per tensor; off measures the difference.
    """
    from sarmae.models.mae import build_mae
    from sarmae.train.pretrain import param_groups

    model = build_mae(model_cfg).to(device).train()
    forward = torch.compile(model, dynamic=False) if compile_model else model
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95), fused=fused_adamw or None)
    size = int(model_cfg.get("img_size", 256))
    images = torch.randn(batch, 3, size, size, device=device)

    def step() -> None:
        with _autocast(device, precision):
            loss, _, _ = forward(images)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return batch / _timed(step, steps, device)


def detection_speed(model_cfg: dict, batch: int, steps: int, device: torch.device, precision: str = "32",
                    train: bool = True) -> float:
    """Images/s of ViTDet training steps (``train``) or inference at the config's input size.

    bf16 inference on a CPU with bf16 instructions measures what ``sarmae predict`` runs there: the detector's bf16
    copy without autocast (:func:`sarmae.infer.detector_io.inference_model`), not autocast over float32 weights.
    """
    from sarmae.infer.detector_io import inference_model, native_bf16
    from sarmae.models.vitdet import build_detector, keep_boxes_float32

    model = build_detector(model_cfg, num_classes=7).to(device)
    keep_boxes_float32(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)  # as in training
    images, targets = random_detection_batch(batch, int(model_cfg.get("img_size", 800)), device)

    def train_step() -> None:
        with _autocast(device, precision):
            loss = sum(model(images, targets).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    bf16_copy = not train and precision.startswith("bf16") and native_bf16(device)
    infer_model = inference_model(model, device, precision) if bf16_copy else model

    @torch.no_grad()
    def infer_step() -> None:
        with contextlib.nullcontext() if bf16_copy else _autocast(device, precision):
            infer_model(images)

    model.train(train)
    return batch / _timed(train_step if train else infer_step, steps, device)
