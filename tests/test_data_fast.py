"""The 8-bit fast path of MAE pre-training (uint8 decode + resize, JPEG at reduced DCT scale) gives the samples of
the float path up to rounding: same crop boxes for the same seed, same geometry, pixels within a grey level or two."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sarmae.data import unlabeled
from sarmae.data.io import IntensityScaling, draft_scale, open_8bit, read_8bit_region, read_image
from sarmae.data.robust import SkipBadSamples
from sarmae.data.synth import generate_image
from sarmae.data.transforms import mae_transforms
from sarmae.data.unlabeled import UnlabeledImages
from sarmae.errors import DataError

GREY_LEVEL = 1 / 255 / 0.225  # one 8-bit step in normalised units (the largest ImageNet std is 0.229)


def _float_path(transform, path):
    return transform(torch.from_numpy(read_image(path)).permute(2, 0, 1).contiguous())


@pytest.fixture(scope="module")
def sar_chip() -> np.ndarray:
    return generate_image(np.random.default_rng(3), 800)[0]


@pytest.mark.parametrize("ext", ["jpg", "png"])
@pytest.mark.parametrize("rgb", [False, True])
@pytest.mark.parametrize("crop", [False, True])
def test_fast_path_matches_float_path(tmp_path, write_image, sar_chip, ext, rgb, crop):
    pixels = np.repeat(sar_chip[:, :, None], 3, axis=2) if rgb else sar_chip
    path = write_image(tmp_path / f"chip.{ext}", pixels)
    transform = mae_transforms(256, random_resized_crop=crop)
    dataset = UnlabeledImages(path, transform=transform)
    # JPEG resized whole is decoded at 1/2 (800 >= 2 x 1.5 x 256): the DCT's averaging differs a little from
    # the resize filter; PNG (and JPEG crops, mostly) only differ by uint8 rounding.
    tol = 2.5 * GREY_LEVEL if ext == "jpg" else 0.6 * GREY_LEVEL
    for seed in range(4):
        torch.manual_seed(seed)
        fast = dataset[0]
        torch.manual_seed(seed)
        slow = _float_path(transform, path)
        assert fast.shape == slow.shape == (3, 256, 256) and fast.dtype == torch.float32
        assert (fast - slow).abs().mean() < tol


def test_fast_path_consumes_the_same_random_draws(tmp_path, write_image, sar_chip):
    path = write_image(tmp_path / "chip.jpg", sar_chip)
    transform = mae_transforms(256, random_resized_crop=True)
    torch.manual_seed(5)
    UnlabeledImages(path, transform=transform)[0]
    after_fast = torch.rand(3)
    torch.manual_seed(5)
    _float_path(transform, path)
    assert torch.equal(after_fast, torch.rand(3))


def _square(size: int, top: int, left: int, side: int) -> np.ndarray:
    image = np.full((size, size), 40, np.uint8)
    image[top : top + side, left : left + side] = 220
    return image


def _centroid(pixels: np.ndarray) -> np.ndarray:
    weight = np.clip(pixels.astype(np.float64) - 130, 0, None)  # the bright square only (40 -> 220)
    ys, xs = np.indices(pixels.shape)
    return np.array([(weight * ys).sum(), (weight * xs).sum()]) / weight.sum()


@pytest.mark.parametrize("box", [(100, 150, 800, 800), (0, 0, 1024, 1024), (37, 211, 790, 813)])
def test_draft_decode_keeps_crop_geometry(tmp_path, box):
    path = tmp_path / "square.jpg"
    Image.fromarray(_square(1024, 420, 530, 120)).save(path, quality=95)
    assert draft_scale(box[2], box[3], 256) >= 2
    with open_8bit(path) as img:
        drafted = read_8bit_region(img, box, 256, Image.Resampling.BILINEAR)
        assert img.size != (1024, 1024)  # really decoded at a reduced scale
    top, left, height, width = box
    full = np.asarray(Image.open(path))  # the full-decode path: same box in original pixels
    reference = np.asarray(Image.fromarray(full).resize((256, 256), Image.Resampling.BILINEAR,
                                                        box=(left, top, left + width, top + height)))
    assert np.abs(drafted.astype(float) - reference).mean() < 1.5
    assert np.abs(_centroid(drafted) - _centroid(reference)).max() < 0.1  # pixels of the output


def test_draft_scale_rule():
    assert draft_scale(800, 800, 256) == 2  # 400 decoded >= 1.5 x 256
    assert draft_scale(512, 512, 256) == 1  # 256 decoded would be the DCT output unresized
    assert draft_scale(1000, 700, 256) == 1
    assert draft_scale(2048, 2048, 256) == 4
    assert draft_scale(4096, 4096, 256) == 8


def test_non_8bit_and_nodata_take_the_float_path(tmp_path, write_image, monkeypatch):
    ramp = (np.arange(64 * 48, dtype=np.uint16) * 19).reshape(64, 48)
    palette = Image.fromarray(np.arange(64 * 48, dtype=np.uint8).reshape(64, 48) % 7).convert("P")
    palette.save(tmp_path / "p.png")
    rgba = np.full((64, 48, 4), 90, np.uint8)
    for path in (write_image(tmp_path / "deep.png", ramp), write_image(tmp_path / "deep.tif", ramp),
                 tmp_path / "p.png", write_image(tmp_path / "rgba.png", rgba),
                 write_image(tmp_path / "rgb16.png", np.stack([ramp] * 3, axis=2))):
        assert open_8bit(path) is None
        transform = mae_transforms(32, random_resized_crop=True)
        torch.manual_seed(0)
        fast = UnlabeledImages(path, transform=transform)[0]
        torch.manual_seed(0)
        assert torch.equal(fast, _float_path(transform, path))

    def no_fast_path(path):
        raise AssertionError("an 8-bit nodata rule must take the float path")

    monkeypatch.setattr(unlabeled, "open_8bit", no_fast_path)
    grey = np.full((40, 40), 9, np.uint8)
    grey[:, 20:] = 200
    dataset = UnlabeledImages(write_image(tmp_path / "g.png", grey), transform=mae_transforms(40),
                              scaling=IntensityScaling(nodata=200))
    torch.manual_seed(1)  # no flip
    assert torch.allclose(dataset[0][:, :, 21:], mae_transforms(40).bias)  # nodata -> 0 before normalising


def test_corrupt_8bit_file_is_a_data_error_naming_it(tmp_path, write_image, sar_chip):
    good = write_image(tmp_path / "pool" / "a.jpg", sar_chip[:300, :300])
    (tmp_path / "pool" / "b.jpg").write_bytes(good.read_bytes()[:2000])  # truncated
    (tmp_path / "pool" / "c.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    dataset = UnlabeledImages(tmp_path / "pool", transform=mae_transforms(64))
    assert dataset[0].shape == (3, 64, 64)
    for i, name in ((1, "b.jpg"), (2, "c.png")):
        with pytest.raises(DataError, match=name):
            dataset[i]
    assert SkipBadSamples(dataset)[1] is None
