"""COCO metrics: faster-coco-eval numbers equal pycocotools', plus conversion, table and DDP gather."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import random
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sarmae.errors import ConfigError, DataError
from sarmae.infer.metrics import (
    TABLE_COLUMNS,
    coco_metrics,
    detections_to_coco,
    format_table,
    gather_results,
)

NAMES = {0: "ship", 1: "aircraft", 2: "car", 3: "tank"}  # 0-based like SARDet-100K; "tank" has no GT


def _box(rng: random.Random, size: int, side: float) -> list[float]:
    w = round(side * rng.uniform(0.7, 1.4), 2)
    h = round(side * side / w, 2)
    return [round(rng.uniform(0, size - w), 2), round(rng.uniform(0, size - h), 2), w, h]


def make_fixture(seed: int = 0) -> tuple[dict, list[dict]]:
    """~20 images with non-contiguous ids, boxes of all COCO sizes, crowd boxes, two dense scenes
    (>100 detections), one image without GT; results with jitter, wrong classes, misses and false positives."""
    rng = random.Random(seed)
    img_ids = sorted(rng.sample(range(1, 500), 20))
    images = [{"id": i, "file_name": f"{i:07d}.png", "width": 512, "height": 512} for i in img_ids]
    anns: list[dict] = []
    for n, img in enumerate(img_ids):
        if n == 5:
            continue  # an image without ground truth
        count = 130 if n in (2, 11) else rng.randint(1, 8)
        for _ in range(count):
            side = rng.choice([12, 20, 28]) if count > 100 else rng.choice([10, 24, 40, 70, 120, 200])
            cat = 0 if count > 100 else rng.choice([0, 0, 1, 2])
            crowd = int(count <= 100 and rng.random() < 0.08)
            bbox = _box(rng, 512, side)
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": cat, "bbox": bbox,
                         "area": round(bbox[2] * bbox[3] * rng.uniform(0.6, 1.0), 2), "iscrowd": crowd})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": k, "name": v} for k, v in NAMES.items()]}

    results = []
    for a in anns:
        if rng.random() < 0.15:
            continue  # miss
        x, y, w, h = a["bbox"]
        j = 0.15 * rng.random()
        box = [x + rng.gauss(0, j * w), y + rng.gauss(0, j * h), w * rng.uniform(1 - j, 1 + j),
               h * rng.uniform(1 - j, 1 + j)]
        cat = a["category_id"] if rng.random() > 0.1 else rng.choice(list(NAMES))
        results.append({"image_id": a["image_id"], "category_id": cat,
                        "bbox": [round(v, 2) for v in box], "score": round(rng.random(), 4)})
    for img in img_ids:  # false positives, also on the image without GT and for the class without GT
        for _ in range(rng.randint(0, 4) + (40 if img in (img_ids[2], img_ids[11]) else 0)):
            results.append({"image_id": img, "category_id": rng.choice(list(NAMES)),
                            "bbox": _box(rng, 512, rng.choice([15, 50, 150])), "score": round(rng.random(), 4)})
    return gt, results


def pycoco_eval(gt: dict, results: list[dict], max_dets=(1, 10, 100), cat_ids=None):
    """Reference: the real pycocotools (not faster-coco-eval's drop-in), quietly."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    assert "faster_coco_eval" not in COCOeval.__module__
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "bbox")
        ev.params.maxDets = list(max_dets)
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _same(a: float, b: float) -> bool:
    """Equal to the last digit; COCO's -1 ("no GT") is our NaN."""
    return math.isnan(a) if b == -1 else a == b


@pytest.fixture(scope="module")
def fixture() -> tuple[dict, list[dict]]:
    gt, results = make_fixture()
    assert "info" not in gt and "licenses" not in gt
    per_image = np.bincount([r["image_id"] for r in results])
    assert per_image.max() > 100  # dense scenes exceed the default cap
    return gt, results


def test_equals_pycocotools_default_caps(fixture):
    gt, results = fixture
    gt_before, res_before = copy.deepcopy(gt), copy.deepcopy(results)
    m = coco_metrics(gt, results)
    ref = pycoco_eval(gt, results).stats
    keys = ["mAP", "AP50", "AP75", "mAP_s", "mAP_m", "mAP_l", "AR1", "AR10", "AR100", "AR_s", "AR_m", "AR_l"]
    for key, expected in zip(keys, ref, strict=True):
        assert _same(m[key], float(expected)), (key, m[key], expected)
    assert all(0.05 < m[k] < 0.95 for k in keys)  # a realistic, non-degenerate fixture
    assert m["n_images"] == 20 and m["n_detections"] == len(results)
    assert gt == gt_before and results == res_before  # inputs are not mutated


def test_max_dets_above_100_equals_pycocotools(fixture):
    gt, results = fixture
    m = coco_metrics(gt, results, max_dets=300)
    ev = pycoco_eval(gt, results, max_dets=(1, 10, 300))
    assert ev.stats[0] == -1  # pycocotools' summarize reads mAP at 100 only: the reason we don't use it
    p = ev.eval["precision"][:, :, :, 0, 2]
    assert m["mAP"] == float(np.mean(p[p > -1]))
    keys = ["AP50", "AP75", "mAP_s", "mAP_m", "mAP_l", "AR1", "AR10", "AR300", "AR_s", "AR_m", "AR_l"]
    for key, expected in zip(keys, ev.stats[1:], strict=True):
        assert _same(m[key], float(expected)), (key, m[key], expected)
    m100 = coco_metrics(gt, results, max_dets=100)
    assert m["AR300"] > m100["AR100"] and m["mAP"] != m100["mAP"]  # the cap matters on dense scenes


def test_per_class_equals_pycocotools_restricted(fixture):
    gt, results = fixture
    per_class = coco_metrics(gt, results)["per_class"]
    assert list(per_class) == list(NAMES.values())
    for cat, name in NAMES.items():
        expected = float(pycoco_eval(gt, results, cat_ids=[cat]).stats[0])
        assert _same(per_class[name], expected), (name, per_class[name], expected)
    assert math.isnan(per_class["tank"])  # no GT -> NaN (pycocotools: -1)
    renamed = coco_metrics(gt, results, class_names={0: "Ship"})["per_class"]
    assert renamed["Ship"] == per_class["ship"]


def test_empty_results_are_zero(fixture):
    gt, _ = fixture
    m = coco_metrics(gt, [])
    for key in [*TABLE_COLUMNS, "AR1", "AR10", "AR100", "AR_s", "AR_m", "AR_l"]:
        assert m[key] == 0.0, key
    assert m["n_detections"] == 0
    assert [v == 0.0 for v in m["per_class"].values()] == [True, True, True, False]


def test_annotation_id_zero_is_safe(fixture):
    """COCOeval marks "unmatched" with GT id 0; the GT copy is renumbered so a 0 id cannot skew results."""
    gt, results = fixture
    k = next(i for i, a in enumerate(gt["annotations"]) if not a["iscrowd"])
    target = gt["annotations"][k]
    results = [*results, {"image_id": target["image_id"], "category_id": target["category_id"],
                          "bbox": list(target["bbox"]), "score": 1.0}]  # a sure true positive
    zero = copy.deepcopy(gt)
    zero["annotations"][k]["id"] = 0
    assert pycoco_eval(zero, results).stats[0] < pycoco_eval(gt, results).stats[0]  # the TP became an FP
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # faster-coco-eval warns about id 0 unless we renumber
        assert coco_metrics(zero, results) == coco_metrics(gt, results)


def test_bad_inputs_raise_one_line_errors(fixture):
    gt, results = fixture
    with pytest.raises(DataError, match="image ids"):
        coco_metrics(gt, [{**results[0], "image_id": 100000}])
    with pytest.raises(DataError, match="category ids"):
        coco_metrics(gt, [{**results[0], "category_id": 6}])
    with pytest.raises(DataError, match="categories"):
        coco_metrics({k: v for k, v in gt.items() if k != "categories"}, results)
    with pytest.raises(ConfigError, match="max_dets"):
        coco_metrics(gt, results, max_dets=0)


def test_detections_to_coco_round_trip(fixture):
    gt, _ = fixture
    label_to_cat_id = {cat + 1: cat for cat in NAMES}  # training labels 1..K -> 0-based dataset ids
    anns = [a for a in gt["annotations"] if not a["iscrowd"]]
    image_ids = [img["id"] for img in gt["images"]]
    outputs = []
    for img in image_ids:
        mine = [a for a in anns if a["image_id"] == img]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in mine)],
                             dtype=torch.float32).reshape(-1, 4)
        outputs.append({"boxes": boxes, "labels": torch.tensor([a["category_id"] + 1 for a in mine]),
                        "scores": torch.rand(len(mine))})
    res = detections_to_coco(torch.tensor(image_ids), outputs, label_to_cat_id)
    assert len(res) == len(anns)
    for r, a in zip(res, sorted(anns, key=lambda a: image_ids.index(a["image_id"])), strict=True):
        assert (r["image_id"], r["category_id"]) == (a["image_id"], a["category_id"])
        assert type(r["image_id"]) is int and type(r["category_id"]) is int
        assert np.allclose(r["bbox"], a["bbox"], atol=0.011)
        assert all(v == round(v, 2) for v in r["bbox"])
    json.dumps(res)  # plain python types
    assert coco_metrics(gt, res)["mAP"] < 1.0  # dense scenes have more boxes than the default cap
    m = coco_metrics(gt, res, max_dets=300)
    assert m["mAP"] == 1.0 and m["mAP_s"] == 1.0 and m["mAP_l"] == 1.0 and m["AR300"] == 1.0
    with pytest.raises(DataError, match="label 9"):
        detections_to_coco([1], [{"boxes": torch.zeros(1, 4), "labels": torch.tensor([9]),
                                  "scores": torch.ones(1)}], label_to_cat_id)


def test_format_table():
    rows = {
        "ImageNet": {"mAP": 0.4567, "AP50": 0.8, "AP75": 0.45, "mAP_s": 0.31, "mAP_m": 0.5, "mAP_l": math.nan},
        "SARDet-100K (MAE)": {c: (0.5 + i / 100, 0.0031) for i, c in enumerate(TABLE_COLUMNS)},
    }
    lines = format_table(rows).splitlines()
    assert len(lines) == 4
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["Pre-train data", *TABLE_COLUMNS]
    assert set(lines[1]) <= {"|", "-", ":"}
    assert [c.strip() for c in lines[2].strip("|").split("|")] == [
        "ImageNet", "45.7", "80.0", "45.0", "31.0", "50.0", "n/a"]
    assert [c.strip() for c in lines[3].strip("|").split("|")][1:3] == ["50.0 ± 0.3", "51.0 ± 0.3"]
    assert len({len(line) for line in lines}) == 1  # aligned columns


def test_gather_results_identity_without_ddp():
    res = [{"image_id": 1, "category_id": 0, "bbox": [0, 0, 1, 1], "score": 0.5}] * 2
    assert not dist.is_initialized()
    assert gather_results(res) is res


def _gather_worker(rank: int, tmp: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    # rank 0 got images 10, 11, 12; rank 1 got 13, 14 and image 10 again as DistributedSampler padding
    images = [10, 11, 12] if rank == 0 else [13, 14, 10]
    mine = [{"image_id": i, "category_id": 0, "bbox": [0, 0, 5, 5], "score": 0.9, "rank": rank, "k": k}
            for i in images for k in range(2)]
    out = gather_results(mine)
    Path(tmp, f"out{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


def test_gather_results_two_gloo_processes(tmp_path):
    mp.spawn(_gather_worker, args=(str(tmp_path),), nprocs=2, join=True)
    outs = [json.loads((tmp_path / f"out{r}.json").read_text()) for r in range(2)]
    assert outs[0] == outs[1]
    assert sorted(r["image_id"] for r in outs[0]) == sorted([10, 10, 11, 11, 12, 12, 13, 13, 14, 14])
    assert {r["rank"] for r in outs[0] if r["image_id"] == 10} == {0}  # padded copy dropped
