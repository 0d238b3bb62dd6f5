"""``sarmae predict``: run a detector on image files, folders or globs; draw class-coloured boxes.

Outputs in ``--out``: ``predictions.json`` (COCO results plus ``file_name`` and ``category_name``, boxes in
the original image's pixels) and one rendered PNG per image. Also draws the ground truth vs prediction
view used by ``sarmae evaluate`` (paper Figure 3).
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from sarmae.data.io import IMAGE_EXTENSIONS, IntensityScaling, read_image
from sarmae.engine.detector_io import load_detector, pick_device
from sarmae.errors import DataError

# Tab10-like colours, one per class label (1-based; cycles for more classes).
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (recursive) and glob patterns -> sorted unique image paths."""
    paths: list[Path] = []
    for item in inputs:
        matches = [Path(m) for m in sorted(glob.glob(item, recursive=True))] if glob.has_magic(item) else [Path(item)]
        if not matches:
            raise DataError(f"{item}: the pattern matches no file")
        for path in matches:
            if path.is_dir():
                paths += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            elif path.is_file():
                paths.append(path)
            else:
                raise DataError(f"{path}: no such file or folder")
    unique = list(dict.fromkeys(paths))
    if not unique:
        raise DataError(f"no images found in {' '.join(inputs)} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return unique


def draw_boxes(image: np.ndarray, boxes, labels, scores, names: list[str], width: int = 2) -> Image.Image:
    """``image`` float (H, W, 3) in [0, 1]; boxes xyxy pixels; labels 1..K; returns an RGB PIL image."""
    canvas = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    for box, label, score in zip(boxes, labels, scores):
        colour = PALETTE[(int(label) - 1) % len(PALETTE)]
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        text = names[int(label) - 1] + ("" if score is None else f" {float(score):.2f}")
        draw.text((x1 + 2, max(0.0, y1 - 11)), text, fill=colour)
    return canvas


@torch.no_grad()
def predict(
    checkpoint: Path,
    inputs: list[str],
    out: Path,
    score_threshold: float = 0.3,
    device: str = "auto",
    batch_size: int = 4,
) -> list[dict]:
    """Detect objects in every input image; returns the predictions written to ``predictions.json``."""
    module = load_detector(checkpoint)
    dev = pick_device(device)
    model = module.model.to(dev).eval()
    names = list(module.classes["names"])
    scaling = IntensityScaling.from_config((module.cfg.get("data") or {}).get("scaling"))
    paths = expand_inputs(inputs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    predictions: list[dict] = []
    failed: list[str] = []
    for start in tqdm(range(0, len(paths), batch_size), desc="predict", unit="batch"):
        batch_paths, images = [], []
        for path in paths[start : start + batch_size]:
            try:
                images.append(read_image(path, scaling))
                batch_paths.append(path)
            except DataError as exc:
                failed.append(str(exc))
        if not images:
            continue
        tensors = [torch.from_numpy(im).permute(2, 0, 1).to(dev) for im in images]
        for index, (path, image, output) in enumerate(zip(batch_paths, images, model(tensors))):
            keep = output["scores"] >= score_threshold
            boxes, labels, scores = (output[k][keep].cpu() for k in ("boxes", "labels", "scores"))
            for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist()):
                predictions.append({
                    "image_id": start + index, "file_name": str(path),
                    "category_id": module.label_to_cat_id[int(label)], "category_name": names[int(label) - 1],
                    "bbox": [round(box[0], 2), round(box[1], 2), round(box[2] - box[0], 2),
                             round(box[3] - box[1], 2)],
                    "score": round(float(score), 4),
                })
            draw_boxes(image, boxes, labels, scores, names).save(out / f"{path.stem}.png")
    (out / "predictions.json").write_text(json.dumps(predictions, indent=1))
    print(f"{len(predictions)} detections in {len(paths) - len(failed)} images -> {out / 'predictions.json'}")
    for message in failed:
        print(f"skipped: {message}")
    return predictions


def save_gt_vs_prediction(dataset, results: list[dict], out: Path, classes: dict, count: int = 4,
                          score_threshold: float = 0.3) -> Path:
    """Side-by-side ground truth | prediction for the first ``count`` images with objects."""
    names = list(classes["names"])
    cat_to_label = {int(v): int(k) for k, v in classes["label_to_cat_id"].items()}
    by_image: dict[int, list[dict]] = {}
    for r in results:
        if r["score"] >= score_threshold:
            by_image.setdefault(int(r["image_id"]), []).append(r)
    tiles = []
    for index in range(len(dataset)):
        image, target = dataset[index]
        if len(target["labels"]) == 0:
            continue
        pixels = image.permute(1, 2, 0).numpy()
        gt = draw_boxes(pixels, target["boxes"], target["labels"], [None] * len(target["labels"]), names)
        dets = by_image.get(int(target["image_id"]), [])
        boxes = [[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]] for d in dets]
        pred = draw_boxes(pixels, boxes, [cat_to_label[d["category_id"]] for d in dets], [d["score"] for d in dets],
                          names)
        row = Image.new("RGB", (gt.width * 2 + 8, gt.height), "white")
        row.paste(gt, (0, 0))
        row.paste(pred, (gt.width + 8, 0))
        tiles.append(row)
        if len(tiles) == count:
            break
    if not tiles:
        raise DataError("no image with objects to draw")
    sheet = Image.new("RGB", (max(t.width for t in tiles), sum(t.height + 8 for t in tiles)), "white")
    y = 0
    for tile in tiles:
        sheet.paste(tile, (0, y))
        y += tile.height + 8
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
