"""Scene detections on disk: COCO results, CSV, GeoJSON (WGS84 lon/lat when georeferenced) and a preview PNG.

Pixel coordinates are continuous scene pixels, (0, 0) = top-left corner of the first pixel, as in COCO and
in GDAL's affine / GCP conventions, so a box corner maps to the world with the raster's own transform:
:class:`rasterio.transform.AffineTransformer` (north-up or rotated grids) or
:class:`rasterio.transform.GCPTransformer` (polynomial fit to the GCPs, how Sentinel-1 GRD / SLC tiffs come),
then :func:`rasterio.warp.transform` to EPSG:4326 when the CRS is something else (UTM, ...).

GeoJSON follows RFC 7946: [lon, lat] order, closed rings with a counter-clockwise exterior. Boxes are
polygons through the four transformed corners (boxes are small, so their edges stay straight enough).
Rasters without a CRS and transform/GCPs get the same file in pixel coordinates, flagged in the file and
with a warning. Polygons crossing the antimeridian are not split.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sarmae.data.scene import Georef, Scene
from sarmae.infer.detections import Detections, coco_result
from sarmae.infer.drawing import class_colour


def pixel_to_lonlat(georef: Georef, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Continuous scene pixel coordinates (``x`` column, ``y`` row; any shape) -> WGS84 (lon, lat) in degrees."""
    from rasterio.transform import AffineTransformer, GCPTransformer
    from rasterio.warp import transform as warp_transform

    if not georef.ok:
        raise ValueError("the scene is not georeferenced (no CRS with an affine transform or GCPs)")
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    shape = x.shape
    if x.size == 0:
        return x.copy(), y.copy()
    if georef.transform is not None:
        transformer = AffineTransformer(georef.transform)
    else:
        transformer = GCPTransformer(list(georef.gcps))
    mx, my = transformer.xy(y.ravel(), x.ravel(), offset="ul")
    mx, my = np.asarray(mx, np.float64), np.asarray(my, np.float64)
    if georef.crs.to_epsg() != 4326:
        mx, my = (np.asarray(v, np.float64) for v in warp_transform(georef.crs, "EPSG:4326", mx, my))
    return mx.reshape(shape), my.reshape(shape)


def box_rings(boxes: np.ndarray, georef: Georef | None) -> list[list[list[float]]]:
    """(N, 4) xyxy scene px -> N closed counter-clockwise rings of [lon, lat] (or [x, y] without georef)."""
    if len(boxes) == 0:
        return []
    x1, y1, x2, y2 = boxes.T
    xs = np.stack([x1, x2, x2, x1], axis=1)  # (N, 4) corners
    ys = np.stack([y1, y1, y2, y2], axis=1)
    if georef is not None and georef.ok:
        xs, ys = pixel_to_lonlat(georef, xs, ys)
    # Shoelace signed area: > 0 counter-clockwise in a y-up plane (lon/lat); reverse the rest.
    area = np.sum(xs * np.roll(ys, -1, axis=1) - np.roll(xs, -1, axis=1) * ys, axis=1)
    rings = []
    for k in range(len(boxes)):
        pts = [[round(float(a), 9), round(float(b), 9)] for a, b in zip(xs[k], ys[k])]
        if area[k] < 0:
            pts.reverse()
        rings.append(pts + [pts[0]])
    return rings


def _category(labels: np.ndarray, names: list[str], label_to_cat_id: dict) -> tuple[list[int], list[str]]:
    ids = [int(label_to_cat_id[int(k)]) for k in labels]
    return ids, [names[int(k) - 1] for k in labels]


def write_coco(path: Path, dets: Detections, file_name: str, names: list[str], label_to_cat_id: dict) -> Path:
    """COCO results list (:func:`~sarmae.infer.detections.coco_result`: ``image_id`` 0, ``bbox`` [x, y, w, h] in
    scene px) plus ``file_name`` / ``category_name``."""
    ids, cat_names = _category(dets.labels, names, label_to_cat_id)
    results = [coco_result(0, cid, box, score, file_name=file_name, category_name=cname)
               for box, score, cid, cname in zip(dets.boxes, dets.scores, ids, cat_names)]
    path.write_text(json.dumps(results, indent=1))
    return path


def write_csv(path: Path, dets: Detections, names: list[str], label_to_cat_id: dict, georef: Georef | None) -> Path:
    """One row per detection: id, x1, y1, x2, y2, score, category_id, category_name (+ lon, lat of the centre)."""
    ids, cat_names = _category(dets.labels, names, label_to_cat_id)
    geo = georef is not None and georef.ok
    if geo and len(dets):
        lon, lat = pixel_to_lonlat(georef, (dets.boxes[:, 0] + dets.boxes[:, 2]) / 2,
                                   (dets.boxes[:, 1] + dets.boxes[:, 3]) / 2)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "x1", "y1", "x2", "y2", "score", "category_id", "category_name"]
                        + (["lon", "lat"] if geo else []))
        for k, (box, score) in enumerate(zip(dets.boxes, dets.scores)):
            row = [k, *(f"{v:.2f}" for v in box), f"{score:.4f}", ids[k], cat_names[k]]
            writer.writerow(row + ([f"{lon[k]:.8f}", f"{lat[k]:.8f}"] if geo else []))
    return path


def write_geojson(path: Path, dets: Detections, names: list[str], label_to_cat_id: dict, georef: Georef | None,
                  source: str = "") -> Path:
    """:func:`geojson_collection` as a file; warns when the coordinates are pixels, not lon/lat."""
    if not (georef is not None and georef.ok):
        warnings.warn(f"{source or path}: not georeferenced (no CRS with an affine transform or GCPs); {path.name} "
                      "has pixel coordinates (x right, y down), not lon/lat", stacklevel=2)
    path.write_text(json.dumps(geojson_collection(dets, names, label_to_cat_id, georef, source)))
    return path


def geojson_collection(dets: Detections, names: list[str], label_to_cat_id: dict, georef: Georef | None,
                       source: str = "") -> dict:
    """FeatureCollection of box polygons with class, score and pixel box; WGS84 when ``georef`` is usable."""
    geo = georef is not None and georef.ok
    ids, cat_names = _category(dets.labels, names, label_to_cat_id)
    features = [
        {"type": "Feature", "id": k,
         "geometry": {"type": "Polygon", "coordinates": [ring]},
         "properties": {"category_id": ids[k], "category_name": cat_names[k], "score": round(float(s), 4),
                        "bbox_px": [round(float(v), 2) for v in box]}}
        for k, (ring, box, s) in enumerate(zip(box_rings(dets.boxes, georef), dets.boxes, dets.scores))
    ]
    return {"type": "FeatureCollection", "features": features,
            "sarmae": {"source": source, "coordinates": "WGS84 lon/lat" if geo else "pixel x/y (y down)"}}


def write_preview(path: Path, scene: Scene, dets: Detections, names: list[str], max_side: int = 2048) -> Path:
    """Downscaled scene (longest side <= ``max_side``) with class-coloured boxes and a legend."""
    image, _, scale = scene.overview(max_side)
    canvas = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width = 1 if max(canvas.size) < 1024 else 2
    for box, label in zip(dets.boxes * scale, dets.labels):
        x1, y1, x2, y2 = (float(v) for v in box)
        # Keep boxes of tiny objects visible after downscaling.
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        x1, x2 = min(x1, cx - 2), max(x2, cx + 2)
        y1, y2 = min(y1, cy - 2), max(y2, cy + 2)
        draw.rectangle([x1, y1, x2, y2], outline=class_colour(label), width=width)
    for k, name in enumerate(names):
        count = int((dets.labels == k + 1).sum())
        if count:
            draw.text((4, 4 + 12 * k), f"{name}: {count}", fill=class_colour(k + 1))
    canvas.save(path)
    return path


def write_outputs(scene: Scene, dets: Detections, out_dir: Path, names: list[str], label_to_cat_id: dict,
                  preview_side: int = 2048) -> dict[str, Path]:
    """All outputs, named after the scene: ``STEM.detections.{json,csv,geojson}`` and ``STEM.preview.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = scene.path.stem
    georef = scene.georef
    return {
        "coco": write_coco(out_dir / f"{stem}.detections.json", dets, str(scene.path), names, label_to_cat_id),
        "csv": write_csv(out_dir / f"{stem}.detections.csv", dets, names, label_to_cat_id, georef),
        "geojson": write_geojson(out_dir / f"{stem}.detections.geojson", dets, names, label_to_cat_id, georef,
                                 str(scene.path)),
        "preview": write_preview(out_dir / f"{stem}.preview.png", scene, dets, names, preview_side),
    }


__all__ = ["box_rings", "pixel_to_lonlat", "write_coco", "write_csv", "write_geojson", "write_outputs",
           "write_preview"]
