"""Detection and MAE transforms: boxes follow resize/flip exactly; normalisation and output sizes."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from sarmae.data.coco import CocoDetection
from sarmae.data.transforms import IMAGENET_MEAN, IMAGENET_STD, detection_transforms, mae_transforms


def _sample(height: int, width: int, boxes: list[list[float]], labels: list[int]):
    image = torch.full((3, height, width), 0.1)
    for x1, y1, x2, y2 in boxes:
        image[:, int(y1) : int(y2), int(x1) : int(x2)] = 1.0
    target = {
        "boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes), format="XYXY", canvas_size=(height, width)),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "image_id": 3,
        "orig_size": (height, width),
    }
    return tv_tensors.Image(image), target


def test_train_resize_and_flip_move_boxes_like_hand_computation():
    # W=80, H=40 -> (32, 32): x scales by 32/80 = 0.4, y by 32/40 = 0.8
    box = [10.0, 5.0, 30.0, 25.0]
    resized = [10 * 0.4, 5 * 0.8, 30 * 0.4, 25 * 0.8]  # [4, 4, 12, 20]
    flipped = [32 - resized[2], resized[1], 32 - resized[0], resized[3]]  # x' = W - x
    transform = detection_transforms(train=True, size=32)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        image, target = transform(*_sample(40, 80, [box], [2]))
        assert image.shape == (3, 32, 32) and tuple(target["boxes"].canvas_size) == (32, 32)
        assert target["labels"].tolist() == [2] and target["image_id"] == 3 and target["orig_size"] == (40, 80)
        got = target["boxes"][0].tolist()
        is_flipped = got[0] > 16
        assert got == pytest.approx(flipped if is_flipped else resized, abs=1e-4)
        x1, y1, x2, y2 = (round(v) for v in got)
        assert image[0, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].min() > 0.9  # the pixels moved with the box
        seen.add(is_flipped)
    assert seen == {True, False}


def test_sanitize_drops_boxes_too_small_after_resize_with_their_labels():
    image, target = _sample(100, 100, [[10, 10, 11, 60], [20, 20, 80, 80]], [4, 5])
    out_image, out = detection_transforms(train=True, size=10)(image, target)
    assert out["boxes"].shape == (1, 4) and out["labels"].tolist() == [5]
    assert out["boxes"][0].tolist() == pytest.approx([2, 2, 8, 8])


def test_size_none_keeps_size_and_eval_is_identity():
    image, target = _sample(24, 40, [[1, 2, 10, 12]], [1])
    torch.manual_seed(0)
    out_image, out = detection_transforms(train=True, size=None)(image, target)
    assert out_image.shape == (3, 24, 40)
    assert out["boxes"][0].tolist() in ([1, 2, 10, 12], [30, 2, 39, 12])
    same_image, same = detection_transforms(train=False)(image, target)
    assert torch.equal(same_image, image) and torch.equal(same["boxes"], target["boxes"])


def test_detection_transforms_with_dataset(tiny_coco):
    ds = CocoDetection(tiny_coco.root, "train", transforms=detection_transforms(True, size=16))
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, 16, 16) and len(target["boxes"]) == len(target["labels"])
        if len(target["boxes"]):
            assert target["boxes"].min() >= 0 and target["boxes"].max() <= 16


@pytest.mark.parametrize("crop", [False, True])
def test_mae_transforms_size_and_normalisation(crop):
    transform = mae_transforms(size=32, random_resized_crop=crop)
    value = 0.3
    out = transform(torch.full((3, 50, 70), value))
    assert out.shape == (3, 32, 32)
    expected = (value - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out.mean(dim=(1, 2)), expected, atol=1e-4)
    assert (transform.crop is not None) == crop
    if crop:
        assert transform.crop.scale == (0.2, 1.0)


def _torchvision_mae(size: int, crop: bool) -> v2.Compose:
    """The MAE recipe written with torchvision v2 transforms (what ``mae_transforms`` must reproduce)."""
    first = (v2.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
             if crop else v2.Resize((size, size), antialias=True))
    return v2.Compose([first, v2.RandomHorizontalFlip(0.5), v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD))])


@pytest.mark.parametrize("crop", [False, True])
def test_mae_transforms_equal_torchvision_compose_seed_for_seed(crop):
    image = torch.rand(3, 90, 130)
    ours, theirs = mae_transforms(size=48, random_resized_crop=crop), _torchvision_mae(48, crop)
    for seed in range(10):
        torch.manual_seed(seed)
        a = ours(image)
        after_ours = torch.rand(1)
        torch.manual_seed(seed)
        b = theirs(image)
        assert torch.allclose(a, b, atol=1e-5) and torch.equal(after_ours, torch.rand(1))


def test_mae_crop_box_is_torchvisions():
    transform = mae_transforms(size=256, random_resized_crop=True)
    reference = v2.RandomResizedCrop(256, scale=(0.2, 1.0))
    for seed in range(10):
        torch.manual_seed(seed)
        box, flip = transform.draw(600, 800)
        torch.manual_seed(seed)
        params = reference.make_params([torch.empty(3, 600, 800)])
        assert box == (params["top"], params["left"], params["height"], params["width"])
        assert flip == bool(torch.rand(1) < 0.5)


def test_mae_resize_then_flip_matches_functional():
    image = torch.rand(3, 20, 20)
    torch.manual_seed(1)
    out = mae_transforms(size=20, mean=(0, 0, 0), std=(1, 1, 1))(image)
    assert torch.allclose(out, image, atol=1e-5) or torch.allclose(out, F.horizontal_flip(image), atol=1e-5)
