"""COCO bbox metrics for the paper's Table 1, computed with faster-coco-eval.

Why not just ``COCOeval.summarize()``: pycocotools reports AP only at ``maxDets[2]`` (AP at any other
cap reads -1) and dense SAR scenes need caps above 100, so we evaluate with ``maxDets=[1, 10, max_dets]``
and read every AP at ``max_dets``. With ``max_dets=100`` all 12 numbers equal pycocotools' ``stats``.

Conventions:
- Values are floats in [0, 1]; a metric with no ground truth to measure against (an area bucket or a
  class without GT boxes; pycocotools writes -1) is ``float("nan")``, so that a mean over runs or classes
  cannot silently absorb it. ``format_table`` prints it as ``n/a``.
- The ground truth is copied, never mutated; annotation ids are renumbered 1..N in that copy, because
  COCOeval uses the GT id as the "matched" marker and an id of 0 would read as unmatched.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from faster_coco_eval import COCO, COCOeval_faster

from sarmae.errors import ConfigError, DataError
from sarmae.infer.detections import coco_result

log = logging.getLogger(__name__)

# Columns of the paper's Table 1, in order.
TABLE_COLUMNS: tuple[str, ...] = ("mAP", "AP50", "AP75", "mAP_s", "mAP_m", "mAP_l")


def _nan_if_undefined(value: float) -> float:
    """COCOeval's -1 ("nothing to measure") becomes NaN."""
    value = float(value)
    return math.nan if value < 0 else value


def _clean_gt(coco_gt: Mapping[str, Any]) -> dict[str, Any]:
    """Validated shallow copy of a COCO detection dict: ``images``, ``annotations`` (ids 1..N), ``categories``.

    ``info``/``licenses`` are not needed (SARDet-100K has none). A missing ``area`` is taken as
    bbox w*h, the value COCO's converters write.
    """
    if not isinstance(coco_gt, Mapping):
        raise DataError(f"ground truth is a {type(coco_gt).__name__}, not a COCO dict; load the json first")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco_gt.get(key), list):
            raise DataError(f"ground truth has no '{key}' list; pass a COCO detection json")
    if not coco_gt["images"]:
        raise DataError("ground truth has no images; there is nothing to evaluate")
    if not coco_gt["categories"]:
        raise DataError("ground truth has no categories; add a 'categories' list with ids and names")
    images = [{**img, "id": int(img["id"])} for img in coco_gt["images"]]
    anns = []
    for new_id, ann in enumerate(coco_gt["annotations"], start=1):
        bbox = ann.get("bbox")
        if bbox is None or len(bbox) != 4:
            raise DataError(f"ground-truth annotation id={ann.get('id')} has no 4-value 'bbox'; fix the json")
        area = ann.get("area", float(bbox[2]) * float(bbox[3]))
        anns.append({**ann, "id": new_id, "image_id": int(ann["image_id"]), "area": area})
    return {"images": images, "annotations": anns, "categories": [dict(c) for c in coco_gt["categories"]]}


def _clean_results(results: Sequence[Mapping[str, Any]], img_ids: set[int], cat_ids: set[int]) -> list[dict]:
    """Fresh result dicts (COCO's ``loadRes`` writes into them), checked against the GT's ids.

    Unknown category ids raise instead of being ignored: that is the symptom of 1-based training labels
    that were not mapped back to the dataset's (here 0-based) category ids.
    """
    clean = []
    bad_imgs: set[int] = set()
    bad_cats: set[int] = set()
    for r in results:
        try:
            img, cat = int(r["image_id"]), int(r["category_id"])
            x, y, w, h = (float(v) for v in r["bbox"])
            score = float(r["score"])
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"result {dict(r)!r} is not a COCO bbox result (image_id, category_id, "
                            f"bbox [x,y,w,h], score): {err}") from None
        if img not in img_ids:
            bad_imgs.add(img)
        if cat not in cat_ids:
            bad_cats.add(cat)
        clean.append({"image_id": img, "category_id": cat, "bbox": [x, y, w, h], "score": score})
    if bad_imgs:
        raise DataError(f"results name image ids {sorted(bad_imgs)[:5]} that are not in the ground truth; "
                        "evaluate against the annotation file the images came from")
    if bad_cats:
        raise DataError(f"results use category ids {sorted(bad_cats)} but the ground truth has "
                        f"{sorted(cat_ids)}; map training labels back with label_to_cat_id")
    return clean


def coco_metrics(
    coco_gt: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    max_dets: int = 100,
    class_names: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """COCO bbox evaluation (IoU .50:.95) of ``results`` against ``coco_gt``.

    Returns ``mAP, AP50, AP75, mAP_s, mAP_m, mAP_l`` (all at ``max_dets`` detections per image),
    ``AR1, AR10, AR{max_dets}, AR_s, AR_m, AR_l``, ``per_class`` ({name: AP .50:.95, area all, at
    ``max_dets``; NaN for a class without GT}), ``n_images`` (GT images) and ``n_detections``.
    ``class_names`` maps category id -> name; default: the GT's ``categories`` names.
    """
    if isinstance(max_dets, bool) or not isinstance(max_dets, (int, np.integer)) or max_dets < 1:
        raise ConfigError(f"max_dets={max_dets!r}: must be a positive integer (detections kept per image)")
    gt = _clean_gt(coco_gt)
    cat_ids = {int(c["id"]) for c in gt["categories"]}
    dts = _clean_results(results, {img["id"] for img in gt["images"]}, cat_ids)

    coco = COCO(gt, print_function=log.debug)
    evaluator = COCOeval_faster(coco, coco.loadRes(dts), iouType="bbox", print_function=log.debug)
    evaluator.params.maxDets = sorted({1, 10, int(max_dets)})
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()

    # all_stats layout for 3 area ranges and M caps: AP, AP50, AP75, AP s/m/l, AR@each cap, AR s/m/l, ...
    stats = [_nan_if_undefined(v) for v in evaluator.all_stats]
    caps = evaluator.params.maxDets
    out: dict[str, Any] = dict(zip(TABLE_COLUMNS, stats[:6], strict=True))
    for i, cap in enumerate(caps):
        out[f"AR{cap}"] = stats[6 + i]
    for i, size in enumerate("sml"):
        out[f"AR_{size}"] = stats[6 + len(caps) + i]

    names = {int(c["id"]): str(c.get("name", c["id"])) for c in gt["categories"]}
    names.update({int(k): str(v) for k, v in (class_names or {}).items()})
    precision = evaluator.eval["precision"]  # (T iou, R recall, K class, A area, M caps); -1 = no GT
    out["per_class"] = {}
    for k, cat in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        out["per_class"][names[int(cat)]] = float(np.mean(p[p > -1])) if (p > -1).any() else math.nan
    out["n_images"] = len(gt["images"])
    out["n_detections"] = len(dts)
    return out


def detections_to_coco(
    image_ids: Sequence[int] | torch.Tensor,
    outputs: Sequence[Mapping[str, torch.Tensor]],
    label_to_cat_id: Mapping[int, int],
) -> list[dict[str, Any]]:
    """torchvision detector outputs -> COCO results (:func:`sarmae.infer.detections.coco_result`).

    ``outputs[i]`` holds ``boxes`` (N,4) xyxy pixels, ``labels`` (N,) int64 in 1..K and ``scores`` (N,)
    for image ``image_ids[i]``. Boxes become xywh rounded to 0.01 px and scores to 1e-5 (sub-pixel
    noise only bloats the json); labels become the dataset's own category ids via ``label_to_cat_id``.
    """
    ids = image_ids.tolist() if isinstance(image_ids, torch.Tensor) else list(image_ids)
    if len(ids) != len(outputs):
        raise ValueError(f"{len(ids)} image ids for {len(outputs)} detector outputs")
    mapping = {int(k): int(v) for k, v in label_to_cat_id.items()}
    results = []
    for img_id, out in zip(ids, outputs, strict=True):
        boxes = out["boxes"].detach().to("cpu", torch.float64).reshape(-1, 4).tolist()
        labels = out["labels"].detach().cpu().reshape(-1).tolist()
        scores = out["scores"].detach().to("cpu", torch.float64).reshape(-1).tolist()
        for box, label, score in zip(boxes, labels, scores, strict=True):
            if label not in mapping:
                raise DataError(f"detector label {label} has no category id (known labels "
                                f"{sorted(mapping)}); the checkpoint's num_classes does not fit this dataset")
            results.append(coco_result(img_id, mapping[label], box, score))
    return results


def _cell(value: Any, scale: float, digits: int) -> str:
    """One table cell: ``45.7``, ``45.7 ± 0.3`` for a (mean, std) pair, ``n/a`` for missing/NaN."""
    if isinstance(value, (tuple, list)):
        mean, std = (float(v) for v in value)
        if math.isnan(mean):
            return "n/a"
        return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"
    if value is None or math.isnan(float(value)):
        return "n/a"
    return f"{float(value) * scale:.{digits}f}"


def format_table(
    rows: Mapping[str, Mapping[str, Any]],
    columns: Sequence[str] = TABLE_COLUMNS,
    first_header: str = "Pre-train data",
    scale: float = 100.0,
    digits: int = 1,
) -> str:
    """Markdown table like the paper's Table 1: one row per pre-training source, metrics x ``scale``.

    A row value is a float or a ``(mean, std)`` pair (printed ``mean ± std``); missing or NaN is ``n/a``.
    """
    body = [[name] + [_cell(metrics.get(c), scale, digits) for c in columns] for name, metrics in rows.items()]
    return markdown_table([first_header, *columns], body)


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """Aligned markdown: the first column left-aligned (row names), the others right-aligned (numbers)."""
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join([":" + "-" * (widths[0] + 1)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|")
    for r in body:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gather_results(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All ranks' COCO results on every rank (``all_gather_object``); ``results`` itself without DDP.

    DistributedSampler pads the last batch by repeating images, so a padded image's detections arrive
    from two ranks. Each image id is owned by the lowest rank that returned any result for it, and only
    that rank's results are kept (the copies come from the same model on the same image). With NCCL,
    ``torch.cuda.set_device(local_rank)`` must have been called, as ``all_gather_object`` requires.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return results
    per_rank: list[list[dict[str, Any]] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, results)
    owner: dict[int, int] = {}
    merged = []
    for rank, part in enumerate(per_rank):
        for r in part or []:
            if owner.setdefault(int(r["image_id"]), rank) == rank:
                merged.append(r)
    return merged
