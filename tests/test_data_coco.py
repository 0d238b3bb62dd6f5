"""COCO / SARDet-100K dataset: boxes, labels, layouts, statistics, errors, robust loading."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from sarmae.data.coco import SARDET_CLASSES, CocoDetection
from sarmae.data.robust import SkipBadSamples, collate_detection
from sarmae.errors import DataError


def _by_id(ds: CocoDetection) -> dict[int, tuple]:
    return {ds.image_info(i)["id"]: ds[i] for i in range(len(ds))}


def test_item_types_and_shapes(tiny_coco):
    ds = CocoDetection(tiny_coco.root, "train")
    image, target = ds[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.float32
    assert image.shape == (3, 48, 64) and 0 <= image.min() and image.max() <= 1
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes)
    assert target["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
    assert tuple(target["boxes"].canvas_size) == (48, 64) and target["boxes"].dtype == torch.float32
    assert target["labels"].dtype == torch.int64 and len(target["labels"]) == len(target["boxes"])
    assert target["image_id"] == 7 and target["orig_size"] == (48, 64)
    assert ds.image_path(0) == tiny_coco.root / "JPEGImages" / "train" / "0000007.jpg"


def test_boxes_converted_clipped_and_filtered(tiny_coco):
    ds = CocoDetection(tiny_coco.root, "train")
    items = _by_id(ds)
    boxes7, labels7 = items[7][1]["boxes"], items[7][1]["labels"]
    # ship xywh [4,6,20,10] -> xyxy [4,6,24,16]; tank [50,30,30,30] clipped to the 64x48 image
    assert boxes7.tolist() == [[4, 6, 24, 16], [50, 30, 64, 48]]
    assert [ds.label_to_cat_id[int(l)] for l in labels7] == [0, 3]
    assert items[8][1]["boxes"].tolist() == [[0, 0, 10, 12]]
    assert items[9][1]["boxes"].shape == (0, 4) and items[9][1]["labels"].shape == (0,)
    assert ds.stats["dropped_degenerate"] == 1  # aircraft fully outside the image
    assert ds.stats["crowd_ignored"] == 2  # iscrowd=1 and ignore=1
    assert ds.stats["clipped"] == 1 and ds.stats["boxes"] == 3 and ds.stats["empty_images"] == 1
    # the box region is the bright painted area of the image: boxes and pixels agree
    x1, y1, x2, y2 = (int(v) for v in boxes7[0])
    assert items[7][0][0, y1:y2, x1:x2].mean() > 0.9 and items[7][0][0, :5, 30:].mean() < 0.3


def test_keep_empty_false_filters_images_without_boxes(tiny_coco):
    ds = CocoDetection(tiny_coco.root, "train", keep_empty=False)
    assert len(ds) == 2 and {ds.image_info(i)["id"] for i in range(2)} == {7, 8}
    assert ds.stats["empty_filtered"] == 1 and ds.stats["images_in_file"] == 3


def test_label_mapping_round_trip_with_sparse_ids(tmp_path, make_coco):
    cats = [{"id": 10, "name": "tank"}, {"id": 3, "name": "ship"}, {"id": 7, "name": "car"}]
    imgs = [{"id": 1, "file_name": "a.png", "width": 20, "height": 20}]
    anns = [{"image_id": 1, "category_id": c, "bbox": [1, 1, 5, 5]} for c in (7, 10, 3)]
    make_coco(tmp_path, "val", imgs, anns, categories=cats)
    ds = CocoDetection(tmp_path, "val")
    assert ds.cat_id_to_label == {3: 1, 7: 2, 10: 3} and ds.class_names == ("ship", "car", "tank")
    assert ds.num_classes == 3
    for label, cat_id in ds.label_to_cat_id.items():
        assert ds.cat_id_to_label[cat_id] == label
    labels = ds[0][1]["labels"].tolist()
    assert [ds.label_to_cat_id[l] for l in labels] == [7, 10, 3]
    assert [ds.class_names[l - 1] for l in labels] == ["car", "tank", "ship"]


def test_flat_and_split_folders_resolve_per_file(tmp_path, make_coco):
    imgs = [{"id": i, "file_name": f"{i:07d}.png", "width": 16, "height": 16} for i in (1, 2)]
    anns = [{"image_id": 1, "category_id": 0, "bbox": [2, 2, 4, 4]}]
    make_coco(tmp_path / "flat", "test", imgs, anns, flat=True)
    flat = CocoDetection(tmp_path / "flat", "test")
    assert flat.image_path(0) == tmp_path / "flat" / "JPEGImages" / "0000001.png"
    assert flat[0][1]["boxes"].tolist() == [[2, 2, 6, 6]]
    # mixed: one file per split folder, the other flat
    make_coco(tmp_path / "mixed", "test", imgs, anns)
    (tmp_path / "mixed" / "JPEGImages" / "test" / "0000002.png").rename(
        tmp_path / "mixed" / "JPEGImages" / "0000002.png"
    )
    mixed = CocoDetection(tmp_path / "mixed", "test")
    assert [mixed.image_path(i).parent.name for i in range(2)] == ["test", "JPEGImages"]
    assert mixed[1][0].shape == (3, 16, 16)


def test_missing_info_licenses_tolerated_and_coco_gt_completed(tiny_coco):
    raw = json.loads(tiny_coco.ann_file.read_text())
    assert "info" not in raw and "licenses" not in raw
    ds = CocoDetection(tiny_coco.root, "train")
    assert ds.coco_gt["info"] == {} and ds.coco_gt["licenses"] == []
    assert len(ds.coco_gt["annotations"]) == len(raw["annotations"])  # evaluation sees crowd boxes too
    assert ds.ann_file == tiny_coco.ann_file


def test_transforms_are_applied(tiny_coco):
    def halve(image, target):
        return image * 0.5, {**target, "labels": target["labels"] + 100}

    ds = CocoDetection(tiny_coco.root, "train", transforms=halve)
    plain = CocoDetection(tiny_coco.root, "train")
    assert torch.allclose(ds[1][0], plain[1][0] * 0.5)
    assert ds[1][1]["labels"].tolist() == [106]


def test_sardet_classes_order():
    assert SARDET_CLASSES == ("ship", "aircraft", "car", "tank", "bridge", "harbor")


# --- errors ------------------------------------------------------------------------------------------


def _write(root, split, data):
    path = root / "Annotations" / f"{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_missing_root_and_json(tmp_path, tiny_coco):
    with pytest.raises(DataError, match="nope"):
        CocoDetection(tmp_path / "nope", "train")
    with pytest.raises(DataError, match=r"val.json.*found: train"):
        CocoDetection(tiny_coco.root, "val")


@pytest.mark.parametrize(
    "data, message",
    [
        ("{not json", "invalid JSON"),
        ([1, 2], "not a COCO"),
        ({"annotations": []}, "not a COCO"),
        ({"images": [], "annotations": []}, "categories"),
    ],
)
def test_invalid_json_files(tmp_path, data, message):
    path = _write(tmp_path, "bad", data)
    with pytest.raises(DataError, match=message) as err:
        CocoDetection(tmp_path, "bad")
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "ann, message",
    [
        ({"bbox": [1, 1, -3, 4]}, "negative box size"),
        ({"category_id": 42}, "unknown category_id 42"),
        ({"image_id": 999}, "image_id 999"),
        ({"bbox": [1, 2, 3]}, "bbox"),
    ],
)
def test_bad_annotations_name_json_and_annotation(tmp_path, make_coco, ann, message):
    imgs = [{"id": 1, "file_name": "a.png", "width": 20, "height": 20}]
    base = {"id": 55, "image_id": 1, "category_id": 0, "bbox": [1, 1, 3, 3]}
    make_coco(tmp_path, "train", imgs, [base], write_images=False)
    data = json.loads((tmp_path / "Annotations" / "train.json").read_text())
    data["annotations"][0].update(ann)
    path = _write(tmp_path, "train", data)
    with pytest.raises(DataError, match=message) as err:
        CocoDetection(tmp_path, "train")
    assert str(path) in str(err.value) and "annotation 55" in str(err.value)


def test_missing_image_and_size_mismatch_at_getitem(tmp_path, make_coco, write_image):
    imgs = [
        {"id": 1, "file_name": "gone.png", "width": 20, "height": 20},
        {"id": 2, "file_name": "size.png", "width": 20, "height": 20},
    ]
    make_coco(tmp_path, "train", imgs, [])
    (tmp_path / "JPEGImages" / "train" / "gone.png").unlink()
    write_image(tmp_path / "JPEGImages" / "train" / "size.png", torch.zeros(10, 12, dtype=torch.uint8).numpy())
    ds = CocoDetection(tmp_path, "train")  # construction does not touch image files
    with pytest.raises(DataError, match=r"gone.png.*image id 1"):
        ds[0]
    with pytest.raises(DataError, match=r"size.png.*12x10.*20x20"):
        ds[1]


def test_robust_wrapper_skips_and_counts_corrupt_image(tiny_coco, caplog):
    (tiny_coco.root / "JPEGImages" / "train" / "0000008.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    ds = SkipBadSamples(CocoDetection(tiny_coco.root, "train"))
    assert ds.label_to_cat_id[1] == 0 and len(ds) == 3  # attributes read through the wrapper
    assert len(pickle.loads(pickle.dumps(ds))) == 3  # picklable for spawned loader workers
    loader = DataLoader(ds, batch_size=3, collate_fn=collate_detection)
    with caplog.at_level("WARNING"):
        images, targets, skipped = next(iter(loader))
    assert skipped == 1 and len(images) == len(targets) == 2
    assert [t["image_id"] for t in targets] == [7, 9]
    assert "0000008.png" in caplog.text
    with pytest.raises(DataError, match="0000008.png"):
        SkipBadSamples(ds.dataset, strict=True)[1]


def test_clip_box_is_the_one_box_rule():
    from sarmae.data.coco import clip_box

    assert clip_box(4, 6, 20, 10, 64, 48) == ("kept", (4, 6, 24, 16))
    assert clip_box(50, 30, 30, 30, 64, 48) == ("clipped", (50, 30, 64, 48))
    assert clip_box(-2, 0, 5, 5, 64, 48) == ("clipped", (0.0, 0, 3, 5))
    assert clip_box(70, 10, 5, 5, 64, 48) == ("dropped", None)  # entirely outside
    assert clip_box(10, 10, 0, 5, 64, 48) == ("dropped", None)  # zero width
    assert clip_box(10, 10, -1, 5, 64, 48) == ("negative", None)
