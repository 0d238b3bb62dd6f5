"""Dataset-side helpers shared by training and inference: what a checkpoint remembers about the classes, and the
evaluation DataLoader (unreadable images dropped and counted, per-image sizes kept; training order is
:mod:`sarmae.data.sampling`'s)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from sarmae.data.coco import CocoDetection
from sarmae.data.robust import SkipBadSamples, collate_detection


def class_info(dataset: CocoDetection) -> dict:
    """What a checkpoint must remember about the classes: names and label -> file category id."""
    return {"names": list(dataset.class_names), "label_to_cat_id": {int(k): int(v) for k, v in
                                                                     dataset.label_to_cat_id.items()}}


def detection_loader(dataset, cfg: dict, batch_size: int | None = None) -> DataLoader:
    """Evaluation loader, in file order: drops unreadable images (``data.strict=true`` raises instead) and keeps
    per-image sizes."""
    data = cfg.get("data") or {}
    workers = int(data.get("workers", 4))
    return DataLoader(
        SkipBadSamples(dataset, strict=bool(data.get("strict", False))),
        batch_size=batch_size or int(cfg["batch_size"]),
        num_workers=workers,
        collate_fn=collate_detection,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        # Its own generator: a loader without one draws its worker seed from the global RNG each time its iterator
        # is made, which would shift the training's random stream by how often validation ran in this process.
        generator=torch.Generator().manual_seed(0),
    )


__all__ = ["class_info", "detection_loader"]
