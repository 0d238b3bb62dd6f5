"""``sarmae evaluate``: COCO bbox metrics of a detector checkpoint on one split (paper Table 1 row).

The computation is the one of training-time validation (same loader, detector outputs -> :func:`~sarmae.infer.
metrics.detections_to_coco` -> :func:`~sarmae.infer.metrics.coco_metrics`, the training precision on a GPU), without
any training code, and writes ``metrics.json`` (Table 1 keys + per_class, strict JSON: NaN becomes null),
``results.json`` (COCO results with the dataset's own image and category ids) and ``samples.png`` (ground truth |
prediction, paper Figure 3 style).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from sarmae.data.coco import CocoDetection
from sarmae.data.io import IntensityScaling
from sarmae.data.loaders import class_info, detection_loader
from sarmae.errors import ConfigError, DataError
from sarmae.infer.detector_io import Detector, inference_autocast, load_detector, pick_device
from sarmae.infer.drawing import draw_boxes
from sarmae.infer.metrics import coco_metrics, detections_to_coco, format_table


def json_safe(obj: Any) -> Any:
    """NaN / inf -> None, recursively, so ``json.dumps(..., allow_nan=False)`` writes strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def evaluate_checkpoint(
    checkpoint: Path,
    data_root: Path,
    split: str = "val",
    out: Path | None = None,
    max_dets: int = 100,
    batch_size: int = 4,
    device: str = "auto",
) -> dict:
    """Evaluate, print the Table 1 row, write the three files; returns the metrics dict (NaN where undefined)."""
    if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 1:
        raise ConfigError(f"--max-dets {max_dets}: must be a whole number >= 1 (detections scored per image)")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be >= 1")
    dev = pick_device(device)
    detector = load_detector(checkpoint)
    cfg = detector.cfg
    dataset = CocoDetection(
        data_root, split, scaling=IntensityScaling.from_config((cfg.get("data") or {}).get("scaling")),
        keep_empty=True,
    )
    if class_info(dataset) != detector.class_info():
        raise DataError(
            f"{dataset.ann_file}: categories {dict(zip(dataset.label_to_cat_id.values(), dataset.class_names))} "
            f"differ from the checkpoint's {dict(zip(detector.label_to_cat_id.values(), detector.names))} "
            "(id: name); evaluate on a dataset with the categories the model was trained for"
        )
    if len(dataset) == 0:
        raise DataError(f"{dataset.ann_file}: no images to evaluate")
    detector.set_max_dets(max_dets)
    loader = detection_loader(dataset, {**cfg, "batch_size": batch_size})
    results = detect_split(detector, loader, dev, get_precision(cfg))
    names = dict(zip(detector.label_to_cat_id.values(), detector.names))
    metrics = coco_metrics(dataset.coco_gt, results, max_dets=max_dets, class_names=names)
    print(format_table({split: metrics}))
    out = Path(out) if out else Path("runs") / "evaluate" / f"{Path(checkpoint).parent.parent.name}_{split}"
    out.mkdir(parents=True, exist_ok=True)
    summary = {**metrics, "checkpoint": str(checkpoint), "data": str(data_root), "split": split, "max_dets": max_dets}
    (out / "metrics.json").write_text(json.dumps(json_safe(summary), indent=2, allow_nan=False))
    (out / "results.json").write_text(json.dumps(results, allow_nan=False))
    save_gt_vs_prediction(dataset, results, out / "samples.png", detector.classes)
    print(f"wrote {out / 'metrics.json'}, {out / 'results.json'}, {out / 'samples.png'}")
    return metrics


@torch.inference_mode()
def detect_split(detector: Detector, loader, device: torch.device, precision: str = "32-true") -> list[dict]:
    """COCO results (the dataset's image and category ids) for every readable image of ``loader`` (batches of
    :func:`sarmae.data.loaders.detection_loader`), as training-time validation computes them. Full precision on
    CPU (bf16 there is slow); the training ``precision`` on a GPU."""
    model = detector.model.to(device).eval()
    results: list[dict] = []
    with inference_autocast(precision, device):
        for images, targets, _ in tqdm(loader, desc="evaluate", unit="batch", leave=False):
            if not images:  # every image of this batch was unreadable (warnings name them)
                continue
            outputs = model([image.to(device, non_blocking=True) for image in images])
            results += detections_to_coco([int(t["image_id"]) for t in targets], outputs, detector.label_to_cat_id)
    return results


def get_precision(cfg: dict) -> str:
    return str((cfg.get("trainer") or {}).get("precision", "32-true"))


def save_gt_vs_prediction(dataset: CocoDetection, results: list[dict], out: Path, classes: dict, count: int = 4,
                          score_threshold: float = 0.3, min_side: int = 256) -> Path:
    """Rows of ground truth | prediction (score >= ``score_threshold``) for the first ``count`` images with objects
    (the first images at all when none has objects); unreadable images are left out. Images smaller than
    ``min_side`` are enlarged by an integer factor (nearest neighbour)."""
    names = list(classes["names"])
    cat_to_label = {int(v): int(k) for k, v in classes["label_to_cat_id"].items()}
    by_image: dict[int, list[dict]] = {}
    for r in results:
        if r["score"] >= score_threshold:
            by_image.setdefault(int(r["image_id"]), []).append(r)
    annotated = {a.get("image_id") for a in dataset.coco_gt["annotations"] if not a.get("iscrowd", 0)}
    with_objects = [i for i in range(len(dataset)) if dataset.image_info(i)["id"] in annotated]
    order = with_objects or list(range(len(dataset)))
    tiles = []
    for index in order:
        try:
            image, target = dataset[index]
        except (DataError, OSError):
            continue
        pixels = image.permute(1, 2, 0).numpy()
        zoom = max(1, -(-min_side // min(pixels.shape[:2])))  # small chips are enlarged so labels stay readable
        pixels = pixels.repeat(zoom, axis=0).repeat(zoom, axis=1)
        gt = draw_boxes(pixels, target["boxes"] * zoom, target["labels"], [None] * len(target["labels"]), names)
        dets = by_image.get(int(target["image_id"]), [])
        boxes = [[zoom * d["bbox"][0], zoom * d["bbox"][1], zoom * (d["bbox"][0] + d["bbox"][2]),
                  zoom * (d["bbox"][1] + d["bbox"][3])] for d in dets]
        pred = draw_boxes(pixels, boxes, [cat_to_label[d["category_id"]] for d in dets], [d["score"] for d in dets],
                          names)
        row = Image.new("RGB", (gt.width * 2 + 8, gt.height), "white")
        row.paste(gt, (0, 0))
        row.paste(pred, (gt.width + 8, 0))
        tiles.append(row)
        if len(tiles) == count:
            break
    sheet = Image.new("RGB", (max((t.width for t in tiles), default=1), max(1, sum(t.height + 8 for t in tiles))),
                      "white")
    y = 0
    for tile in tiles:
        sheet.paste(tile, (0, y))
        y += tile.height + 8
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
