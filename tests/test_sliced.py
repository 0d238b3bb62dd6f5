"""Sliced inference: tiling, seam handling (no duplicate, no lost object), nodata, merging, the real entry point."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from sarmae.data.scene import open_scene
from sarmae.data.synth import generate_image
from sarmae.errors import ConfigError
from sarmae.infer.sliced import (
    Detections,
    Tile,
    greedy_merge,
    is_large,
    nms_merge,
    overlap_pairs,
    predict_scene,
    sliced_detect,
    tile_windows,
)

TILE, OVERLAP = 160, 0.2
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def write_geotiff(path, array, crs=None, transform=None, nodata=None):
    """``array`` (H, W) -> single-band GeoTIFF (tiled, deflate) with optional CRS / transform / nodata."""
    profile = {"driver": "GTiff", "width": array.shape[1], "height": array.shape[0], "count": 1,
               "dtype": array.dtype.name, "tiled": True, "blockxsize": 64, "blockysize": 64, "compress": "deflate"}
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array[None])
    return path


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    """A 3x3 mosaic of 256-px synthetic chips (768 x 768 uint8 GeoTIFF) and its boxes, labels 1..6."""
    rng = np.random.default_rng(3)
    size, n = 256, 3
    pixels = np.zeros((n * size, n * size), np.uint8)
    gt = []
    for r in range(n):
        for c in range(n):
            chip, boxes = generate_image(rng, size)
            pixels[r * size : (r + 1) * size, c * size : (c + 1) * size] = chip
            for cat, (x, y, w, h) in boxes:
                gt.append((cat + 1, x + c * size, y + r * size, x + c * size + w, y + r * size + h))
    path = write_geotiff(tmp_path_factory.mktemp("mosaic") / "mosaic.tif", pixels)
    labels = np.array([g[0] for g in gt], np.int64)
    boxes = np.array([g[1:] for g in gt], np.float64)
    return path, boxes, labels


class ClippingDetector:
    """Fake detector that only sees what lies inside each tile: the ground-truth boxes clipped to the tile
    (visible part >= ``min_side`` px each way), in tile-image px. Records the tiles it was given."""

    def __init__(self, boxes: np.ndarray, labels: np.ndarray, min_side: float = 2.0) -> None:
        self.boxes, self.labels, self.min_side = boxes, labels, min_side
        self.tiles: list[Tile] = []
        self.scores = np.linspace(0.95, 0.6, len(boxes)).astype(np.float32)

    def __call__(self, images, tiles):
        outputs = []
        for image, tile in zip(images, tiles, strict=True):
            assert image.shape[0] == 3 and image.dtype == torch.float32
            self.tiles.append(tile)
            rect = np.array([tile.x, tile.y, tile.x + tile.w, tile.y + tile.h], np.float64)
            lo, hi = np.maximum(self.boxes[:, :2], rect[:2]), np.minimum(self.boxes[:, 2:], rect[2:])
            clipped = np.concatenate([lo, hi], 1)
            seen = ((clipped[:, 2] - clipped[:, 0]) * tile.scale >= self.min_side) & (
                (clipped[:, 3] - clipped[:, 1]) * tile.scale >= self.min_side)
            local = (clipped[seen] - [tile.x, tile.y, tile.x, tile.y]) * tile.scale
            outputs.append({"boxes": torch.from_numpy(local).float(), "scores": torch.from_numpy(self.scores[seen]),
                            "labels": torch.from_numpy(self.labels[seen])})
        return outputs


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def _cut_by_seam(boxes: np.ndarray, tiles: list[Tile]) -> np.ndarray:
    """True for boxes that at least one tile they intersect cuts (the seam objects)."""
    cut = np.zeros(len(boxes), bool)
    for t in tiles:
        inter = (np.minimum(boxes[:, 2], t.x + t.w) > np.maximum(boxes[:, 0], t.x)) & (
            np.minimum(boxes[:, 3], t.y + t.h) > np.maximum(boxes[:, 1], t.y))
        inside = (boxes[:, 0] >= t.x) & (boxes[:, 1] >= t.y) & (boxes[:, 2] <= t.x + t.w) & (boxes[:, 3] <= t.y + t.h)
        cut |= inter & ~inside
    return cut


# --- tiling ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("width,height,tile,overlap",
                         [(768, 500, 160, 0.2), (1000, 1000, 256, 0.3), (90, 300, 128, 0.2)])
def test_tiles_cover_the_scene_with_the_requested_overlap(width, height, tile, overlap):
    tiles = tile_windows(width, height, tile, overlap)
    covered = np.zeros((height, width), np.int32)
    for t in tiles:
        assert t.x >= 0 and t.y >= 0 and t.x + t.w <= width and t.y + t.h <= height
        assert t.w == min(tile, width) and t.h == min(tile, height)
        covered[t.y : t.y + t.h, t.x : t.x + t.w] += 1
    assert covered.min() >= 1
    xs = sorted({t.x for t in tiles})
    for a, b in zip(xs, xs[1:]):
        assert a + tile - b >= round(tile * overlap)  # neighbours share at least the overlap
    assert [t.index for t in tiles] == list(range(len(tiles)))


# --- seams -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("merge", ["nms", "greedy"])
def test_seam_objects_are_found_once_and_whole(mosaic, merge):
    path, boxes, labels = mosaic
    fake = ClippingDetector(boxes, labels)
    with open_scene(path) as scene:
        dets, stats = sliced_detect(scene, fake, TILE, OVERLAP, merge=merge, batch_size=4, score_threshold=0.3,
                                    progress=False)
    tiles = tile_windows(768, 768, TILE, OVERLAP)
    seam = _cut_by_seam(boxes, tiles)
    overlap_px = round(TILE * OVERLAP)
    sizes = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    # The scene exercises both seam cases: objects some tile sees whole, and objects larger than the overlap.
    assert seam.sum() >= 6 and (~seam).sum() >= 3
    assert (seam & (sizes > overlap_px)).sum() >= 2 and (seam & (sizes <= overlap_px)).sum() >= 2
    assert stats["raw_detections"] > len(boxes)  # without merging there would be duplicates and fragments
    assert stats["fragments_dropped"] > 0 and stats["fragments_joined"] > 0

    iou = _iou_matrix(boxes, dets.boxes)
    found = (iou >= 0.99) & (labels[:, None] == dets.labels[None, :])
    recall_seam = found[seam].any(axis=1).mean()
    recall_rest = found[~seam].any(axis=1).mean()
    assert recall_seam == recall_rest == 1.0
    assert len(dets) == len(boxes)  # no duplicate and no leftover fragment
    assert (found.sum(axis=0) == 1).all()  # each output box is exactly one object
    assert np.all(np.diff(dets.scores) <= 0)
    if merge == "nms":  # the seam rules are what make this work: plain NMS keeps fragments next to whole boxes
        with open_scene(path) as scene:
            naive, _ = sliced_detect(scene, fake, TILE, OVERLAP, edge_margin=-np.inf, progress=False)
        assert len(naive) > len(boxes)


def test_tiles_smaller_than_objects_still_give_one_box_per_object(mosaic):
    """Tiles of 64 px with 8 px overlap cut most objects into chains of fragments."""
    path, boxes, labels = mosaic
    with open_scene(path) as scene:
        dets, stats = sliced_detect(scene, ClippingDetector(boxes, labels), 64, 0.125, progress=False)
    iou = _iou_matrix(boxes, dets.boxes)
    assert (iou.max(axis=1) >= 0.99).all() and len(dets) == len(boxes)


def test_full_image_pass_adds_a_whole_view_without_duplicates(mosaic):
    path, boxes, labels = mosaic
    fake = ClippingDetector(boxes, labels)
    with open_scene(path) as scene:
        dets, stats = sliced_detect(scene, fake, TILE, OVERLAP, full_image_pass=True, progress=False)
    whole = [t for t in fake.tiles if t.scale < 1]
    assert len(whole) == 1 and whole[0].w == 768 and whole[0].scale == pytest.approx(TILE / 768)
    assert stats["tiles_run"] == stats["tiles"] == len(fake.tiles) - 1
    iou = _iou_matrix(boxes, dets.boxes)
    assert (iou.max(axis=1) >= 0.98).all() and len(dets) == len(boxes)


def test_nodata_regions_give_no_detections_and_empty_tiles_are_skipped(tmp_path, mosaic):
    _, boxes, labels = mosaic
    rng = np.random.default_rng(0)
    pixels = rng.integers(100, 4000, (768, 768)).astype(np.uint16)
    pixels[:, :400] = 0  # nodata: left part of the scene
    path = write_geotiff(tmp_path / "nodata16.tif", pixels, nodata=0)
    fake = ClippingDetector(boxes, labels)  # reports objects everywhere, also on nodata
    with open_scene(path) as scene:
        dets, stats = sliced_detect(scene, fake, TILE, OVERLAP, progress=False)
    all_nodata = [t for t in tile_windows(768, 768, TILE, OVERLAP) if t.x + t.w <= 400]
    assert stats["tiles_skipped"] == len(all_nodata) > 0
    assert not any(t.x + t.w <= 400 for t in fake.tiles)  # never given to the detector
    centres = (dets.boxes[:, 0] + dets.boxes[:, 2]) / 2
    assert len(dets) > 0 and (centres >= 400).all()
    gt_centres = (boxes[:, 0] + boxes[:, 2]) / 2
    partial_x = min(t.x for t in fake.tiles)
    assert ((gt_centres > partial_x) & (gt_centres < 400)).sum() > 0  # the fake did report boxes on nodata
    inside_valid = (boxes[:, 0] >= 400)
    assert len(dets) >= inside_valid.sum()  # objects on valid ground are all kept


def test_a_scene_without_detections_gives_empty_results(mosaic):
    path, _, _ = mosaic
    nothing = ClippingDetector(np.zeros((0, 4)), np.zeros(0, np.int64))
    with open_scene(path) as scene:
        dets, stats = sliced_detect(scene, nothing, TILE, OVERLAP, merge="greedy", full_image_pass=True,
                                    progress=False)
    assert len(dets) == 0 and dets.boxes.shape == (0, 4) and stats["tiles_run"] == stats["tiles"]


# --- merging primitives ------------------------------------------------------------------------------


def test_overlap_pairs_match_brute_force():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 600, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 90, (300, 2))], 1)
    labels = rng.integers(1, 4, 300)
    i, j = overlap_pairs(boxes, labels, cell=64.0)
    got = set(zip(i.tolist(), j.tolist()))
    iou = _iou_matrix(boxes, boxes)
    want = {(a, b) for a, b in zip(*np.nonzero(iou > 0)) if a < b and labels[a] == labels[b]}
    assert got == want and len(want) > 50


def test_greedy_merge_joins_same_class_matches_into_their_union():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [2, 2, 6, 6], [40, 40, 50, 50], [0, 0, 10, 10]], np.float64)
    dets = Detections(boxes, np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32), np.array([1, 1, 1, 1, 2]))
    out = greedy_merge(dets, 0.5, "ios")
    assert out.boxes.tolist() == [[0, 0, 15, 10], [40, 40, 50, 50], [0, 0, 10, 10]]  # box 2 (ios 1) absorbed too
    assert out.labels.tolist() == [1, 1, 2] and out.scores.tolist() == pytest.approx([0.9, 0.6, 0.5])
    by_iou = greedy_merge(dets, 0.5, "iou")  # iou(0, 2) = 0.16 and iou(0, 1) = 0.33: nothing merges
    assert len(by_iou) == 5
    nms = nms_merge(dets, 0.3)
    assert len(nms) == 4 and nms.boxes[0].tolist() == [0, 0, 10, 10]


# --- entry points ------------------------------------------------------------------------------------


TINY = {"size": "tiny", "img_size": 128, "pretrain_img_size": 128, "embed_dim": 64, "depth": 2, "num_heads": 2,
        "window_size": 4, "global_blocks": [1], "fpn_channels": 32, "rpn_pre_nms_top_n_test": 100,
        "rpn_post_nms_top_n_test": 50, "detections_per_img": 20}


@pytest.fixture(scope="module")
def tiny_module():
    """An untrained detector as inference builds it (no training code involved)."""
    from sarmae.infer.detector_io import Detector

    torch.manual_seed(0)
    classes = {"names": ["ship", "aircraft", "car", "tank", "bridge", "harbor"],
               "label_to_cat_id": {k: k - 1 for k in range(1, 7)}}
    return Detector.build({"model": TINY, "data": {"scaling": {"mode": "percentile"}}}, classes).eval()


def test_predict_scene_with_the_tiny_detector_writes_all_outputs(tmp_path, tiny_module):
    rng = np.random.default_rng(0)
    pixels = (rng.gamma(1.0, 300.0, (300, 260)) + 50).astype(np.uint16)
    pixels[:, :70] = 0  # nodata strip: no tile boundary needed there to be skipped
    path = write_geotiff(tmp_path / "scene.tif", pixels, crs="EPSG:32633",
                         transform=Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0), nodata=0)
    assert is_large(path, 128)
    out = tmp_path / "out"
    summary = predict_scene(tiny_module, path, out, overlap=0.2, batch_size=4, score_threshold=0.0, device="cpu",
                            progress=False)
    assert summary["tile_size"] == 128 and summary["georeferenced"] and summary["georef"] == "affine"
    assert summary["tiles"] == len(tile_windows(260, 300, 128, 0.2)) and summary["megapixels_per_s"] > 0
    assert summary["detections"] > 0 and sum(summary["per_class"].values()) == summary["detections"]
    for key in ("coco", "csv", "geojson", "preview", "summary"):
        assert (out / summary["outputs"][key].split("/")[-1]).stat().st_size > 0
    coco = json.loads((out / "scene.detections.json").read_text())
    rows = list(csv.DictReader(open(out / "scene.detections.csv")))
    features = json.loads((out / "scene.detections.geojson").read_text())["features"]
    assert len(coco) == len(rows) == len(features) == summary["detections"]
    for det in coco:
        x, y, w, h = det["bbox"]
        assert 0 <= x and x + w <= 260.01 and 0 <= y and y + h <= 300.01 and 0 <= det["category_id"] <= 5
        assert x + w / 2 >= 70 - 1  # no detection centred on the nodata strip
    lons = [float(r["lon"]) for r in rows]
    assert all(14.99 < v < 15.04 for v in lons)  # UTM 33N, E 500000..502600 m, near its central meridian 15 E
    assert json.loads((out / "scene.summary.json").read_text())["detections"] == summary["detections"]


def test_bad_options_and_is_large(tmp_path, write_image):
    with pytest.raises(ConfigError, match="overlap"):
        sliced_detect(None, None, 128, overlap=0.95)
    with pytest.raises(ConfigError, match="merge 'soft'"):
        sliced_detect(None, None, 128, merge="soft")
    small = write_image(tmp_path / "chip.png", np.zeros((100, 150), np.uint8))
    big = write_image(tmp_path / "wide.png", np.zeros((100, 400), np.uint8))
    assert not is_large(small, 256) and is_large(big, 256)
    assert not is_large(tmp_path / "missing.tif", 256)
