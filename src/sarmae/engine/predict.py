"""``sarmae predict``: run a detector on image files, folders or globs; draw class-coloured boxes.

Outputs in ``--out``: ``predictions.json`` (COCO results plus ``file_name`` and ``category_name``, boxes in
the original image's pixels, category ids of the training dataset, ``image_id`` = 1-based position in the
input list) and one rendered PNG per image. An unreadable image is skipped with a message; the run goes on.
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
from sarmae.errors import ConfigError, DataError

# Tab10-like colours, one per class label (1-based; cycles for more classes).
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (recursive, image extensions only) and glob patterns -> unique paths in the given order.

    A path that does not exist or a pattern that matches nothing is an error: a typo should not silently
    shrink the run.
    """
    paths: list[Path] = []
    for item in inputs:
        matches = [Path(m) for m in sorted(glob.glob(item, recursive=True))] if glob.has_magic(item) else [Path(item)]
        if not matches:
            raise DataError(f"{item}: the pattern matches no file")
        for path in matches:
            if path.is_dir():
                paths += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            elif path.is_file():
                paths.append(path)
            else:
                raise DataError(f"{path}: no such file or folder")
    unique = list(dict.fromkeys(paths))
    if not unique:
        raise DataError(f"no images found in {' '.join(inputs)} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return unique


def draw_boxes(image: np.ndarray, boxes, labels, scores, names: list[str], width: int = 2) -> Image.Image:
    """``image`` float (H, W, 3) in [0, 1]; boxes xyxy pixels; labels 1..K; scores or None; returns an RGB image."""
    canvas = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    for box, label, score in zip(boxes, labels, scores):
        colour = PALETTE[(int(label) - 1) % len(PALETTE)]
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=colour, width=width)
        text = names[int(label) - 1] + ("" if score is None else f" {float(score):.2f}")
        draw.text((x1 + 2, max(0.0, y1 - 11)), text, fill=colour)
    return canvas


def output_names(paths: list[Path]) -> list[str]:
    """``stem.png`` per input; inputs sharing a stem (a.png, a.tif, x/a.png) get ``stem_2.png``, ``stem_3.png``."""
    used: set[str] = set()
    names = []
    for path in paths:
        name, n = f"{path.stem}.png", 1
        while name in used:
            n += 1
            name = f"{path.stem}_{n}.png"
        used.add(name)
        names.append(name)
    return names


@torch.inference_mode()
def predict(
    checkpoint: Path,
    inputs: list[str],
    out: Path,
    score_threshold: float = 0.3,
    device: str = "auto",
    batch_size: int = 4,
) -> list[dict]:
    """Detect objects in every input image; returns the predictions written to ``predictions.json``."""
    if not 0.0 <= score_threshold <= 1.0:
        raise ConfigError(f"--score-threshold {score_threshold}: must be in [0, 1]")
    paths = expand_inputs(inputs)
    dev = pick_device(device)
    module = load_detector(checkpoint)
    model = module.model.to(dev).eval()
    names = list(module.classes["names"])
    scaling = IntensityScaling.from_config((module.cfg.get("data") or {}).get("scaling"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    renders = output_names(paths)
    predictions: list[dict] = []
    skipped = 0
    bar = tqdm(total=len(paths), desc="predict", unit="img")
    for start in range(0, len(paths), batch_size):
        batch: list[tuple[int, np.ndarray]] = []
        for index in range(start, min(start + batch_size, len(paths))):
            try:
                batch.append((index, read_image(paths[index], scaling)))
            except (DataError, OSError) as exc:
                skipped += 1
                tqdm.write(f"skipped {paths[index]}: {exc}")
        if batch:
            tensors = [torch.from_numpy(image).permute(2, 0, 1).to(dev) for _, image in batch]
            for (index, image), output in zip(batch, model(tensors)):
                keep = output["scores"] >= score_threshold
                boxes, labels, scores = (output[k][keep].float().cpu() for k in ("boxes", "labels", "scores"))
                for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist()):
                    predictions.append({
                        "image_id": index + 1, "file_name": str(paths[index]),
                        "category_id": module.label_to_cat_id[int(label)], "category_name": names[int(label) - 1],
                        "bbox": [round(box[0], 2), round(box[1], 2), round(box[2] - box[0], 2),
                                 round(box[3] - box[1], 2)],
                        "score": round(float(score), 5),
                    })
                draw_boxes(image, boxes, labels, scores, names).save(out / renders[index])
        bar.update(min(start + batch_size, len(paths)) - start)
    bar.close()
    (out / "predictions.json").write_text(json.dumps(predictions, indent=1))
    print(f"{len(predictions)} detections (score >= {score_threshold}) in {len(paths) - skipped} images -> "
          f"{out / 'predictions.json'}" + (f"; skipped {skipped} unreadable (messages above)" if skipped else ""))
    return predictions
