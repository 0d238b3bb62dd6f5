"""``sarmae predict``: run a detector on image files, folders or globs; draw class-coloured boxes.

Outputs in ``--out``: ``predictions.json`` (COCO results plus ``file_name`` and ``category_name``, boxes in
the original image's pixels, category ids of the training dataset, ``image_id`` = 1-based position in the
input list) and one rendered PNG per image. An unreadable image is skipped with a message; the run goes on.

Large inputs (a side over 1.5 training sizes, or any georeferenced raster) go through sliced inference
(:mod:`sarmae.infer.sliced`) instead of being shrunk to the training size: their detections join
``predictions.json`` and each also gets ``STEM.detections.{json,csv,geojson}``, ``STEM.preview.png`` and
``STEM.summary.json``. ``sliced="always"`` / ``"never"`` overrides the choice.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sarmae.data.io import IMAGE_EXTENSIONS, IntensityScaling, read_image
from sarmae.errors import ConfigError, DataError
from sarmae.infer.detections import coco_result
from sarmae.infer.detector_io import Detector, load_detector, pick_device
from sarmae.infer.drawing import draw_boxes
from sarmae.infer.sliced import check_options, is_large, predict_scene

SLICED = ("auto", "always", "never")


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


def resolve_options(detector: Detector, sliced: str = "auto", tile_size: int | None = None, overlap: float = 0.2,
                    merge: str = "nms", merge_iou: float = 0.5, batch_size: int = 4, score_threshold: float = 0.3,
                    scaling: IntensityScaling | dict | str | None = None) -> tuple[IntensityScaling, int]:
    """Checked prediction options -> ``(intensity scaling, tile size)``: ``scaling`` defaults to the checkpoint's
    ``data.scaling``, ``tile_size`` to its ``model.img_size``; a value that cannot work is a ``ConfigError``."""
    if sliced not in SLICED:
        raise ConfigError(f"--sliced {sliced}: use one of {', '.join(SLICED)}")
    cfg = detector.cfg or {}
    scaling = IntensityScaling.from_config(scaling if scaling is not None else (cfg.get("data") or {}).get("scaling"))
    tile = int(tile_size or (cfg.get("model") or {}).get("img_size", 800))
    check_options(tile, overlap, merge, merge_iou, "iou", batch_size, score_threshold)
    return scaling, tile


@torch.inference_mode()
def detect_chips(detector: Detector, images: Sequence[np.ndarray], device: torch.device | str,
                 score_threshold: float) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The whole-image path, one forward pass for a batch of float32 ``(H, W, 3)`` images in [0, 1] (the detector
    resizes each to its training size and maps its boxes back). Per image, on the CPU and with score >=
    ``score_threshold``: ``(boxes (n, 4) float32 xyxy in the image's pixels, labels (n,) 1..K, scores (n,))``."""
    model = detector.inference_model(device)  # bf16 copy on CPUs with bf16 instructions
    outputs = model([torch.from_numpy(image).permute(2, 0, 1).to(device) for image in images])
    found = []
    for output in outputs:
        keep = output["scores"] >= score_threshold
        found.append((output["boxes"][keep].float().cpu(), output["labels"][keep].cpu(),
                      output["scores"][keep].float().cpu()))
    return found


@torch.inference_mode()
def predict(
    checkpoint: Path,
    inputs: list[str],
    out: Path,
    score_threshold: float = 0.3,
    device: str = "auto",
    batch_size: int = 4,
    sliced: str = "auto",
    tile_size: int | None = None,
    overlap: float = 0.2,
    merge: str = "nms",
    merge_iou: float = 0.5,
    full_image_pass: bool = False,
    scaling: IntensityScaling | dict | str | None = None,
) -> list[dict]:
    """Detect objects in every input; returns the predictions written to ``predictions.json``.

    The Python API (:class:`sarmae.api.Detector`) runs the same two paths: :func:`detect_chips` for whole images,
    :func:`~sarmae.infer.sliced.sliced_detect` for large ones, with options from :func:`resolve_options`.

    ``scaling`` (default: the checkpoint's ``data.scaling``) maps 16-bit / float / dB pixels to [0, 1];
    ``tile_size`` defaults to the model's training size. The slicing options are those of
    :func:`sarmae.infer.sliced.predict_scene`.
    """
    paths = expand_inputs(inputs)
    dev = pick_device(device)
    detector = load_detector(checkpoint)
    names = detector.names
    scaling, tile = resolve_options(detector, sliced, tile_size, overlap, merge, merge_iou, batch_size,
                                    score_threshold, scaling)
    large = {p for p in paths if sliced == "always" or (sliced == "auto" and is_large(p, tile))}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    renders = output_names(paths)
    predictions: list[dict] = []
    skipped = 0

    for index, path in enumerate(paths):
        if path not in large:
            continue
        try:
            summary = predict_scene(detector, path, out, tile_size=tile, overlap=overlap, merge=merge, iou=merge_iou,
                                    full_image_pass=full_image_pass, batch_size=batch_size,
                                    score_threshold=score_threshold, device=dev, scaling=scaling)
        except (DataError, OSError) as exc:
            skipped += 1
            tqdm.write(f"skipped {path}: {exc}")
            continue
        for det in json.loads(Path(summary["outputs"]["coco"]).read_text()):
            predictions.append({**det, "image_id": index + 1, "file_name": str(path)})

    chips = [i for i, p in enumerate(paths) if p not in large]
    bar = tqdm(total=len(chips), desc="predict", unit="img", disable=not chips)
    for start in range(0, len(chips), batch_size):
        batch: list[tuple[int, np.ndarray]] = []
        for index in chips[start : start + batch_size]:
            try:
                batch.append((index, read_image(paths[index], scaling)))
            except (DataError, OSError) as exc:
                skipped += 1
                tqdm.write(f"skipped {paths[index]}: {exc}")
        if batch:
            found = detect_chips(detector, [image for _, image in batch], dev, score_threshold)
            for (index, image), (boxes, labels, scores) in zip(batch, found):
                for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist()):
                    predictions.append(coco_result(index + 1, detector.label_to_cat_id[int(label)], box, score,
                                                   file_name=str(paths[index]), category_name=names[int(label) - 1]))
                draw_boxes(image, boxes, labels, scores, names).save(out / renders[index])
        bar.update(len(chips[start : start + batch_size]))
    bar.close()
    if skipped == len(paths):
        raise DataError(f"none of the {len(paths)} input(s) could be read (reasons above), e.g. {paths[0]}")
    predictions.sort(key=lambda p: p["image_id"])
    (out / "predictions.json").write_text(json.dumps(predictions, indent=1))
    scenes = f" ({len(large)} by sliced inference)" if large else ""
    print(f"{len(predictions)} detections (score >= {score_threshold}) in {len(paths) - skipped} images{scenes} -> "
          f"{out / 'predictions.json'}" + (f"; skipped {skipped} unreadable (messages above)" if skipped else ""))
    return predictions


__all__ = [  # draw_boxes: from infer.drawing
    "SLICED", "detect_chips", "draw_boxes", "expand_inputs", "output_names", "predict", "resolve_options",
]
