"""Data augmentation, built on ``torchvision.transforms.v2`` so boxes follow the image automatically.

Detection training mirrors the SARDet-100K toolkit (square resize without keeping the aspect ratio,
horizontal flip, nothing else); evaluation leaves images alone because torchvision's detector resizes
internally and maps its boxes back to the input size. MAE pre-training mirrors the MAE recipe
(bicubic random resized crop, flip, ImageNet normalisation) with a plain resize as the default, since
SAR chips are small and cropping 20 % of a 256-px chip leaves little structure.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def target_labels(inputs: Any) -> torch.Tensor:
    """``labels`` of an ``(image, target)`` pair, for ``SanitizeBoundingBoxes`` (picklable for workers)."""
    target = inputs[1] if isinstance(inputs, (tuple, list)) else inputs
    return target["labels"]


def detection_transforms(train: bool, size: int | None = 800) -> v2.Transform:
    """Transforms for ``(image [3, H, W], target)`` pairs from :class:`~sarmae.data.coco.CocoDetection`.

    train: ``Resize((size, size))`` (skipped when ``size`` is None), ``RandomHorizontalFlip(0.5)``, then
    ``SanitizeBoundingBoxes`` drops boxes that became smaller than 1 px, with their labels.
    eval: identity.
    """
    if not train:
        return v2.Identity()
    steps: list[v2.Transform] = []
    if size is not None:
        steps.append(v2.Resize((size, size), antialias=True))
    steps += [v2.RandomHorizontalFlip(0.5), v2.SanitizeBoundingBoxes(labels_getter=target_labels)]
    return v2.Compose(steps)


def mae_transforms(
    size: int = 256,
    random_resized_crop: bool = False,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> v2.Transform:
    """``[3, H, W]`` in [0, 1] -> normalised ``[3, size, size]``: resize or bicubic random resized crop,
    horizontal flip (0.5), ``Normalize(mean, std)``."""
    if random_resized_crop:
        first: v2.Transform = v2.RandomResizedCrop(
            size, scale=tuple(crop_scale), interpolation=v2.InterpolationMode.BICUBIC, antialias=True
        )
    else:
        first = v2.Resize((size, size), antialias=True)
    return v2.Compose([first, v2.RandomHorizontalFlip(0.5), v2.Normalize(list(mean), list(std))])
