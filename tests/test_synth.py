"""The synthetic SAR benchmark: deterministic, SAR-like statistics, valid boxes, SARDet-100K layout."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from sarmae.data.coco import SARDET_CLASSES
from sarmae.data.synth import generate_image, image_rng, write_dataset
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
