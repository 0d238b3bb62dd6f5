"""``sarmae data check``: a fresh synthetic dataset passes, and each kind of damage is named in the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sarmae.cli import main
from sarmae.data.check import check_dataset
from sarmae.data.synth import write_dataset
from sarmae.errors import DataError


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "ds"
    write_dataset(root, train=6, val=2, test=2, unlabeled=2, size=64, seed=7)
    return root


@pytest.fixture
def ds(pristine, tmp_path) -> Path:
    """A private copy of the pristine dataset that a test may damage."""
    return Path(shutil.copytree(pristine, tmp_path / "ds"))


def _edit(root: Path, split: str, fn) -> dict:
    path = root / "Annotations" / f"{split}.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))
    return data


def _first_ann(data: dict) -> dict:
    assert data["annotations"], "fixture needs at least one annotation"
    return data["annotations"][0]


def test_fresh_synthetic_dataset_is_ok(pristine):
    report = check_dataset(pristine)
    text = report.format()
    assert report.ok, text
    assert list(report.splits) == ["train", "val", "test"]
    train = json.loads((pristine / "Annotations/train.json").read_text())
    assert report.splits["train"].images == 6
    assert report.splits["train"].instances == len(train["annotations"])
    assert report.unlabeled_images == 2
    assert "ship" in text and "64x64" in text and "result: OK" in text


def test_corrupt_image_is_an_error(ds):
    png = ds / "JPEGImages/train/0000002.png"
    png.write_bytes(png.read_bytes()[:60])  # truncated
    report = check_dataset(ds)
    assert not report.ok
    assert "0000002.png" in report.format() and "corrupt" in report.format()


def test_missing_image_is_an_error(ds):
    (ds / "JPEGImages/val/1000002.png").unlink()
    report = check_dataset(ds, splits=["val"])
    assert not report.ok
    assert "missing image file" in report.format() and "1000002.png" in report.format()
    assert list(report.splits) == ["val"] and report.unlabeled_images is None


def test_unknown_category_id_is_an_error(ds):
    ann = {}
    _edit(ds, "train", lambda d: (ann.update(_first_ann(d)), _first_ann(d).update(category_id=17)))
    text = check_dataset(ds).format()
    assert "unknown category id" in text and f"annotation {ann['id']}" in text and "17" in text


def test_duplicate_ids_are_errors(ds):
    def dup(d):
        d["images"].append(dict(d["images"][0]))
        d["annotations"].append(dict(_first_ann(d)))

    data = _edit(ds, "train", dup)
    report = check_dataset(ds)
    text = report.format()
    assert not report.ok
    assert "duplicate image id" in text and f"image id {data['images'][0]['id']}" in text
    assert "duplicate annotation id" in text and f"annotation id {_first_ann(data)['id']}" in text


def test_negative_box_is_an_error(ds):
    data = _edit(ds, "train", lambda d: _first_ann(d).update(bbox=[5.0, 5.0, -3.0, 4.0]))
    report = check_dataset(ds)
    assert not report.ok
    assert "negative box" in report.format() and f"annotation {_first_ann(data)['id']}" in report.format()


def test_dangling_image_id_is_an_error(ds):
    data = _edit(ds, "test", lambda d: d["annotations"].append(
        {"id": 999, "image_id": 4242, "category_id": 0, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0}))
    assert data["annotations"][-1]["id"] == 999
    report = check_dataset(ds)
    assert not report.ok
    assert "not in 'images'" in report.format() and "image_id=4242" in report.format()


def test_out_of_bounds_is_a_warning_and_size_mismatch_an_error(ds):
    """The loader clips a box that leaves its image (warning) but refuses an image whose json size is not the
    file's (error: every epoch would skip it, or train on boxes of the wrong scale)."""
    def damage(d):
        _first_ann(d)["bbox"] = [50.0, 50.0, 30.0, 30.0]  # 64x64 image: leaves it
        d["images"][1]["width"] = 80

    _edit(ds, "train", damage)
    report = check_dataset(ds)
    text = report.format()
    assert not report.ok
    assert "out of image bounds" in text and "listed size differs" in text and "json 80x64" in text
    (warning,) = report.warnings
    assert warning.title.startswith("box out of image bounds") and "the loader clips it" in warning.title
    (error,) = report.errors
    assert error.count == 1 and "0000002.png" in error.examples[0] and "file 64x64" in error.examples[0]


def test_json_size_three_times_the_file_fails_naming_both_sizes(ds):
    _edit(ds, "val", lambda d: [img.update(width=3 * img["width"]) for img in d["images"]])
    report = check_dataset(ds)
    text = report.format()
    assert not report.ok and "result: FAILED" in text
    assert "ERROR [val] listed size differs from the file" in text and "json 192x64, file 64x64" in text
    assert "1000001.png" in text


def test_box_rule_is_the_loaders(ds):
    """Zero-width and fully outside boxes: the loader drops and counts them; the check warns about the same boxes."""
    from sarmae.data.coco import CocoDetection

    def damage(d):
        d["annotations"][0]["bbox"] = [10.0, 10.0, 0.0, 5.0]  # zero width
        d["annotations"][1]["bbox"] = [70.0, 10.0, 5.0, 5.0]  # right of the 64-px image
        d["annotations"][2]["bbox"] = [60.0, 10.0, 10.0, 5.0]  # partly outside: clipped, kept

    data = _edit(ds, "train", damage)
    report = check_dataset(ds, splits=["train"])
    assert report.ok, report.format()
    (dropped,) = [p for p in report.warnings if "drops" in p.title]
    (clipped,) = [p for p in report.warnings if "clips" in p.title]
    loader = CocoDetection(ds, "train").stats
    assert dropped.count == loader["dropped_degenerate"] == 2 and clipped.count == loader["clipped"] == 1
    ids = [a["id"] for a in data["annotations"][:2]]
    assert all(f"annotation {i} " in e for i, e in zip(ids, dropped.examples))
    assert report.splits["train"].instances == loader["boxes"] == len(data["annotations"]) - 2


def test_missing_splits_are_reported(ds):
    (ds / "Annotations/test.json").unlink()
    report = check_dataset(ds)
    assert report.ok and [(p.split, p.title) for p in report.warnings] == [("test", "split missing")]
    (ds / "Annotations/train.json").unlink()
    report = check_dataset(ds)
    text = report.format()
    assert not report.ok and "ERROR [train] split missing" in text and "train.json does not exist" in text
    assert check_dataset(ds, splits=["val"]).ok  # only the splits asked for


def test_invalid_json_is_an_error_and_long_lists_are_capped(ds):
    (ds / "Annotations/val.json").write_text("{not json")
    for png in (ds / "JPEGImages/train").glob("*.png"):
        png.unlink()
    report = check_dataset(ds)
    text = report.format(show=5)
    assert not report.ok
    assert "invalid JSON" in text and "val.json" in text
    assert "missing image file (6)" in text and "... and 1 more" in text


def test_missing_root_or_annotations_raise(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        check_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no \\*.json"):
        check_dataset(tmp_path / "empty")


def test_flat_layout_and_mixed_formats(tiny_coco):
    report = check_dataset(tiny_coco.root)
    text = report.format()
    assert report.ok, text  # the tank box leaves its 64x48 image: a warning only
    assert report.splits["train"].images == 3 and "out of image bounds" in text


def test_cli_synth_then_check(tmp_path, capsys):
    out = tmp_path / "cli_ds"
    args = ["--train", "3", "--val", "1", "--test", "1", "--unlabeled", "1", "--size", "48", "--seed", "2"]
    assert main(["data", "synth", str(out), *args]) == 0
    assert "train 3 images" in capsys.readouterr().out
    assert main(["data", "check", str(out)]) == 0
    assert "result: OK" in capsys.readouterr().out
    (out / "JPEGImages/train/0000001.png").write_bytes(b"garbage")
    assert main(["data", "check", str(out)]) == 1
    assert "0000001.png" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "missing")]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("escaping", ["../../../x.png", "/etc/passwd", "sub/../../x.png", "C:\\data\\x.png"])
def test_a_file_name_that_leaves_the_root_is_refused(ds, tmp_path, escaping):
    """data check reports the entry even though the file exists outside; the loaders refuse the json."""
    outside = tmp_path / "x.png"
    shutil.copyfile(ds / "JPEGImages/train/0000002.png", outside)
    _edit(ds, "train", lambda d: d["images"][0].update(file_name=escaping))
    text = check_dataset(ds).format()
    assert "file name leaves the dataset root" in text and escaping in text and "result: OK" not in text
    from sarmae.data.coco import CocoDetection

    with pytest.raises(DataError, match="leaves the dataset root"):
        CocoDetection(ds, "train")
