"""Data augmentation, built on ``torchvision.transforms.v2`` so boxes follow the image automatically.

Detection training mirrors the SARDet-100K toolkit (square resize without keeping the aspect ratio,
horizontal flip, nothing else); evaluation leaves images alone because torchvision's detector resizes
internally and maps its boxes back to the input size. MAE pre-training mirrors the MAE recipe
(bicubic random resized crop, flip, ImageNet normalisation) with a plain resize as the default, since
SAR chips are small and cropping 20 % of a 256-px chip leaves little structure; 8-bit chips take a fast
path that decodes and resizes in uint8 (see :class:`MAETransform`).
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from sarmae.data.io import read_8bit_region

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


class MAETransform:
    """MAE input: ``[3, H, W]`` in [0, 1] -> normalised ``[3, size, size]``: plain (bilinear, antialiased) resize
    or bicubic random resized crop, horizontal flip (0.5), ``(x - mean) / std``.

    Random draws follow ``v2.Compose([RandomResizedCrop or Resize, RandomHorizontalFlip(0.5), Normalize])``
    exactly (crop box from torchvision's own sampler, then one ``torch.rand(1)`` for the flip), so a seed gives
    the same crops whichever path a sample takes. :meth:`from_8bit` is the fast path for 8-bit chips: it knows
    the crop before decoding, so a JPEG is decoded at a reduced DCT scale and the resize runs on uint8 in
    Pillow; pixels then differ from :meth:`__call__` by rounding only (about one grey level).
    """

    def __init__(self, size: int = 256, random_resized_crop: bool = False, crop_scale: tuple[float, float] = (0.2, 1.0),
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> None:
        self.size = size
        self.crop = v2.RandomResizedCrop(size, scale=tuple(crop_scale)) if random_resized_crop else None
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        # uint8 pixels -> normalised values in one multiply-add: x / 255 / std - mean / std
        self.scale_8bit = 1.0 / (255.0 * self.std)
        self.bias = -self.mean / self.std

    def draw(self, height: int, width: int) -> tuple[tuple[int, int, int, int], bool]:
        """The crop box ``(top, left, height, width)`` in original pixels and whether to flip."""
        if self.crop is None:
            box = (0, 0, height, width)
        else:
            params = self.crop.make_params([torch.empty(0, height, width)])  # only the size is read
            box = (params["top"], params["left"], params["height"], params["width"])
        flip = bool(torch.rand(1) < 0.5)  # v2.RandomHorizontalFlip: skipped when rand >= p
        return box, flip

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        box, flip = self.draw(*image.shape[-2:])
        if self.crop is None:
            out = F.resize(image, [self.size, self.size], antialias=True)
        else:
            out = F.resized_crop(image, *box, [self.size, self.size], interpolation=v2.InterpolationMode.BICUBIC,
                                 antialias=True)
        if flip:
            out = F.horizontal_flip(out)
        return (out - self.mean) / self.std

    def from_8bit(self, img: Image.Image, original_size: tuple[int, int] | None = None) -> torch.Tensor:
        """The same sample from an 8-bit image opened by :func:`~sarmae.data.io.open_8bit` (not yet decoded).

        ``original_size`` (height, width): ``img`` is a reduced copy of an image of that size (packed shards);
        the crop is drawn in the original's pixels, as from the file, and mapped onto ``img``.
        """
        height, width = original_size or (img.height, img.width)
        box, flip = self.draw(height, width)
        if (height, width) != (img.height, img.width):
            fy, fx = img.height / height, img.width / width
            box = (box[0] * fy, box[1] * fx, box[2] * fy, box[3] * fx)
        resample = Image.Resampling.BILINEAR if self.crop is None else Image.Resampling.BICUBIC
        pixels = torch.from_numpy(read_8bit_region(img, box, self.size, resample))
        pixels = pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)  # grey stays one band until here
        if flip:
            pixels = pixels.flip(-1)
        return pixels.float().expand(3, -1, -1) * self.scale_8bit + self.bias


def mae_transforms(
    size: int = 256,
    random_resized_crop: bool = False,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> MAETransform:
    """The MAE pre-training transform (see :class:`MAETransform`)."""
    return MAETransform(size, random_resized_crop, crop_scale, mean, std)
