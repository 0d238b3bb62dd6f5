"""The synthetic SAR benchmark: deterministic, SAR-like statistics, valid boxes, SARDet-100K layout."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from PIL import Image

from sarmae.data.coco import SARDET_CLASSES
from sarmae.data.synth import (
    CAR,
    LAND,
    MANIFEST,
    TANK,
    _Canvas,
    _oil_tank,
    _resize,
    generate_image,
    image_rng,
    native_side,
    write_dataset,
)
from sarmae.errors import ConfigError, DataError

SIZE = 256
N = 60


@pytest.fixture(scope="module")
def samples():
    """N training chips at 256x256 with their labels, plus the measured generation rate."""
    start = time.perf_counter()
    out = [generate_image(image_rng(0, "train", i), SIZE) for i in range(N)]
    rate = N / (time.perf_counter() - start)
    print(f"\nsynthetic generation: {rate:.1f} images/s at {SIZE}x{SIZE} on one core")
    return out


def _box_mask(labels, size):
    mask = np.zeros((size, size), bool)
    for _, (x, y, w, h) in labels:
        mask[y : y + h, x : x + w] = True
    return mask


def test_generate_image_is_deterministic_per_seed():
    a_img, a_lab = generate_image(np.random.default_rng(5), 128)
    b_img, b_lab = generate_image(np.random.default_rng(5), 128)
    c_img, _ = generate_image(np.random.default_rng(6), 128)
    assert a_img.dtype == np.uint8 and a_img.shape == (128, 128)
    assert np.array_equal(a_img, b_img) and a_lab == b_lab
    assert not np.array_equal(a_img, c_img)


def test_boxes_inside_image_and_not_degenerate(samples):
    labels = [lab for _, ls in samples for lab in ls]
    assert labels
    for cat, (x, y, w, h) in labels:
        assert 0 <= cat < len(SARDET_CLASSES)
        assert all(isinstance(v, int) for v in (x, y, w, h))
        assert x >= 0 and y >= 0 and w >= 2 and h >= 2 and x + w <= SIZE and y + h <= SIZE


def test_category_coverage_small_objects_and_empty_images(samples):
    cats = {cat for _, ls in samples for cat, _ in ls}
    assert cats == set(range(len(SARDET_CLASSES)))
    sides = [max(w, h) for _, ls in samples for _, (_, _, w, h) in ls]
    assert sum(s < 32 for s in sides) >= 10  # plenty of COCO-small objects
    assert max(sides) >= 40  # and large ones too
    assert 1 <= sum(not ls for _, ls in samples) <= N // 4  # some scenes without objects
    assert np.mean([len(ls) for _, ls in samples]) >= 1.5  # several objects per image on average


def test_objects_brighter_than_clutter_and_speckled(samples):
    inside, outside, roughness = [], [], []
    for img, labels in samples:
        mask = _box_mask(labels, SIZE)
        pix = img.astype(np.float32)
        if mask.any():
            inside.append(pix[mask].mean())
            outside.append(pix[~mask].mean())
        # Speckle: neighbouring clutter pixels differ a lot; a smooth rendering would give ~0.
        diff = np.abs(np.diff(pix, axis=1))[~mask[:, 1:] & ~mask[:, :-1]]
        roughness.append(np.median(diff))
    assert np.mean(inside) > np.mean(outside) + 10
    assert np.median(roughness) > 5
    # Looks vary per image: the roughness is not one constant.
    assert np.std(roughness) > 0.5


def test_write_dataset_layout_and_determinism(tmp_path):
    kw = dict(train=4, val=2, test=2, unlabeled=3, size=64)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    summary = write_dataset(a, seed=3, **kw)
    write_dataset(b, seed=3, **kw)
    write_dataset(c, seed=4, **kw)
    assert "train 4 images" in str(summary)

    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "Annotations/train.json").read_bytes() != (c / "Annotations/train.json").read_bytes()

    data = json.loads((a / "Annotations/train.json").read_text())
    assert set(data) == {"images", "annotations", "categories"}  # no info / licenses, like SARDet-100K
    assert [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])] == list(SARDET_CLASSES)
    names = [img["file_name"] for img in data["images"]]
    assert len(names) == 4 and all(len(n) == len("0000001.png") for n in names)
    for img in data["images"]:
        with Image.open(a / "JPEGImages/train" / img["file_name"]) as im:
            assert im.mode == "L" and im.size == (img["width"], img["height"]) == (64, 64)
    ids = {img["id"] for img in data["images"]}
    for ann in data["annotations"]:
        assert ann["image_id"] in ids and ann["iscrowd"] == 0 and ann["ignore"] == 0
        assert ann["area"] == ann["bbox"][2] * ann["bbox"][3]
    assert len({ann["id"] for ann in data["annotations"]}) == len(data["annotations"])
    assert len(list((a / "Unlabeled").glob("*.png"))) == 3
    val_names = {i["file_name"] for i in json.loads((a / "Annotations/val.json").read_text())["images"]}
    assert not val_names & set(names)  # names are unique across splits


def test_more_images_keep_the_first_ones(tmp_path):
    write_dataset(tmp_path / "small", train=2, val=0, test=0, unlabeled=0, size=64, seed=1)
    write_dataset(tmp_path / "big", train=4, val=0, test=0, unlabeled=0, size=64, seed=1)
    small = json.loads((tmp_path / "small/Annotations/train.json").read_text())
    big = json.loads((tmp_path / "big/Annotations/train.json").read_text())
    assert big["images"][:2] == small["images"]
    assert big["annotations"][: len(small["annotations"])] == small["annotations"]
    for img in small["images"]:
        name = img["file_name"]
        assert (tmp_path / "small/JPEGImages/train" / name).read_bytes() == (
            tmp_path / "big/JPEGImages/train" / name
        ).read_bytes()


def test_existing_folder_reused_or_refused(tmp_path):
    out = tmp_path / "ds"
    kw = dict(train=2, val=1, test=1, unlabeled=1, size=48, seed=0)
    write_dataset(out, **kw)
    stamp = (out / "Annotations/train.json").stat().st_mtime_ns
    again = write_dataset(out, **kw)
    assert again.reused and "nothing written" in str(again)
    assert (out / "Annotations/train.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="not empty"):
        write_dataset(out, **{**kw, "seed": 1})
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="other files"):
        write_dataset(other, **kw)
    assert (other / "notes.txt").read_text() == "mine"


def test_bad_parameters_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="size"):
        write_dataset(tmp_path / "x", train=1, val=0, test=0, unlabeled=0, size=8)
    with pytest.raises(ConfigError, match="train"):
        write_dataset(tmp_path / "x", train=-1, val=0, test=0, unlabeled=0, size=64)
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------- zoom
def test_zoom_one_is_the_native_rendering(tmp_path):
    ref_img, ref_lab = generate_image(np.random.default_rng(5), 128)
    for zoom in (1, 1.0):
        img, lab = generate_image(np.random.default_rng(5), 128, zoom=zoom)
        assert np.array_equal(img, ref_img) and lab == ref_lab
    kw = dict(train=2, val=1, test=0, unlabeled=1, size=48, seed=2)
    write_dataset(tmp_path / "default", **kw)
    write_dataset(tmp_path / "zoom1", zoom=1.0, **kw)
    files = sorted(p.relative_to(tmp_path / "default") for p in (tmp_path / "default").rglob("*") if p.is_file())
    for rel in files:
        assert (tmp_path / "default" / rel).read_bytes() == (tmp_path / "zoom1" / rel).read_bytes(), rel
    assert json.loads((tmp_path / "default" / MANIFEST).read_text())["params"]["zoom"] == 1.0


def test_zoom_magnifies_the_same_native_scene():
    """(rng, 64 px) and (same rng, 128 px, zoom 2) are one scene: boxes exactly 2x, images alike at 64 px."""
    for i in range(8):
        native, native_labels = generate_image(image_rng(0, "train", i), 64)
        zoomed, zoomed_labels = generate_image(image_rng(0, "train", i), 128, zoom=2)
        assert zoomed.shape == (128, 128) and zoomed.dtype == np.uint8
        assert zoomed_labels == [(cat, tuple(2.0 * v for v in box)) for cat, box in native_labels]
        assert all(isinstance(v, float) for _, box in zoomed_labels for v in box)
        down = zoomed.astype(np.float32).reshape(64, 2, 64, 2).mean(axis=(1, 3))
        assert np.corrcoef(down.ravel(), native.astype(np.float32).ravel())[0, 1] > 0.85, i

        def neighbour_corr(img):
            x = img.astype(np.float32)
            return np.corrcoef(x[:, 1:].ravel(), x[:, :-1].ravel())[0, 1]

        assert neighbour_corr(zoomed) > neighbour_corr(native)  # the resize correlates the speckle


def test_resize_is_bilinear_with_aligned_pixel_centres():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).gamma(1.0, 1.0, (34, 34)).astype(np.float32)
    for size in (68, 100):
        ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], size=(size, size), mode="bilinear",
                                              align_corners=False)[0, 0].numpy()
        np.testing.assert_allclose(_resize(x, size), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size,zoom", [(100, 3.0), (96, 1.7), (64, 2.5), (40, 1.3)])
def test_zoomed_boxes_are_exact_and_inside(size, zoom):
    n = native_side(size, zoom)
    assert n == math.ceil(size / zoom) < size
    touching = 0
    for i in range(12):
        _, labels = generate_image(image_rng(1, "val", i), size, zoom=zoom)
        if n >= 32:  # the native render of the same scene, through the public API
            _, native_labels = generate_image(image_rng(1, "val", i), n)
            assert [cat for cat, _ in labels] == [cat for cat, _ in native_labels]
            for (_, box), (_, nbox) in zip(labels, native_labels, strict=True):
                for v, nv in zip(box, nbox, strict=True):
                    assert v == pytest.approx(nv * size / n, rel=1e-12, abs=1e-12)
        for _, (x, y, w, h) in labels:
            assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= size and y + h <= size
            touching += (x + w == pytest.approx(size)) or (y + h == pytest.approx(size))
    assert touching  # boxes that reach the border stay inside it


def test_tiny_zoom_renders_natively():
    """A zoom that does not change the native side (ceil(33 / 1.01) == 33) resizes nothing: integer boxes."""
    img, labels = generate_image(np.random.default_rng(3), 33, zoom=1.01)
    ref_img, ref_labels = generate_image(np.random.default_rng(3), 33)
    assert np.array_equal(img, ref_img) and labels == ref_labels


def test_zoom_in_the_dataset_manifest_and_coco_boxes(tmp_path):
    out = tmp_path / "z"
    kw = dict(train=3, val=0, test=0, unlabeled=0, size=64, seed=5)
    summary = write_dataset(out, zoom=2.5, **kw)
    assert "zoom 2.5" in str(summary)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["params"]["zoom"] == 2.5 and manifest["version"] >= 2
    data = json.loads((out / "Annotations/train.json").read_text())
    expected = [box for i in range(3) for _, box in generate_image(image_rng(5, "train", i), 64, zoom=2.5)[1]]
    assert [tuple(a["bbox"]) for a in data["annotations"]] == expected
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        assert x + w <= 64 and y + h <= 64 and ann["area"] == w * h
    assert write_dataset(out, zoom=2.5, **kw).reused
    with pytest.raises(DataError, match="not empty"):  # a cached dataset of another zoom is not reused
        write_dataset(out, zoom=2.0, **kw)
    with pytest.raises(DataError, match="not empty"):
        write_dataset(out, **kw)


@pytest.mark.parametrize("zoom", [0.5, 0, -2.0, float("nan"), float("inf"), "2", True, None, 5.0])
def test_bad_zoom_is_a_one_line_config_error(tmp_path, zoom):
    with pytest.raises(ConfigError, match="--zoom") as info:
        write_dataset(tmp_path / "x", train=1, val=0, test=0, unlabeled=0, size=64, zoom=zoom)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="--zoom"):
        generate_image(np.random.default_rng(0), 64, zoom=zoom)


def test_cli_zoom(tmp_path, capsys):
    from sarmae.cli import main

    out = tmp_path / "cli"
    args = ["--train", "1", "--val", "0", "--test", "0", "--unlabeled", "0", "--size", "48", "--zoom", "1.5"]
    assert main(["data", "synth", str(out), *args]) == 0
    assert "zoom 1.5" in capsys.readouterr().out
    assert json.loads((out / MANIFEST).read_text())["params"]["zoom"] == 1.5


# ---------------------------------------------------------------------------------------- oil tanks
@pytest.mark.parametrize("floating", [True, False])
def test_oil_tank_is_a_round_bright_ring_with_a_shadow(floating):
    for k, look in enumerate((0.0, math.pi / 2, math.pi, 3 * math.pi / 2)):
        cv = _Canvas(64, res=1.0, db=np.full((64, 64), -10.0, np.float32), region=np.full((64, 64), LAND, np.uint8))
        box = _oil_tank(np.random.default_rng(k), cv, 32.0, 32.0, look, 16.0, floating)
        assert box is not None and cv.labels == [(TANK, box)]
        x, y, w, h = box
        assert 16 <= min(w, h) and max(w, h) <= 16 + 0.35 * 8 + 2 and max(w, h) / min(w, h) < 1.25
        # radial profile of the noise-free tank about its box centre: a bright rim, a darker roof, nothing outside
        yy, xx = np.mgrid[0:64, 0:64] + 0.5
        d = np.hypot(xx - (x + w / 2), yy - (y + h / 2))
        body = cv.bodies
        rim, roof, outside = body[(d > 5.5) & (d < 8)].mean(), body[d < 4].mean(), body[d > 13].mean()
        assert rim > (2.5 if floating else 1.0) * roof and outside < 0.01 * rim  # fixed roofs: a bright disk
        # the radar shadow darkens the ground on the far side only (look direction = +u)
        far = (int(32 + 10 * math.sin(look)), int(32 + 10 * math.cos(look)))
        near = (int(32 - 10 * math.sin(look)), int(32 - 10 * math.cos(look)))
        assert cv.db[far] < -15 and cv.db[near] == -10


def test_tanks_in_generated_images_are_round_and_larger_than_cars():
    tanks, car_sides, ring_minus_centre = [], [], []
    yy, xx = np.mgrid[0:128, 0:128] + 0.5
    for i in range(80):
        img, labels = generate_image(image_rng(0, "train", i), 128)
        pix = img.astype(np.float32)
        for cat, (x, y, w, h) in labels:
            if cat == CAR:
                car_sides.append(max(w, h))
            if cat != TANK or min(x, y) == 0 or max(x + w, y + h) == 128:  # skip tanks cut by the border
                continue
            tanks.append((w, h))
            d, r = np.hypot(xx - (x + w / 2), yy - (y + h / 2)), min(w, h) / 2
            ring_minus_centre.append(pix[(d > r - 2.5) & (d < r)].mean() - pix[d < r / 2].mean())
    assert len(tanks) >= 20 and car_sides
    assert all(max(w, h) / min(w, h) <= 1.3 for w, h in tanks)
    assert np.median([max(t) for t in tanks]) >= 1.5 * np.median(car_sides)
    assert np.mean(ring_minus_centre) > 8 and np.mean(np.array(ring_minus_centre) > 0) > 0.75
