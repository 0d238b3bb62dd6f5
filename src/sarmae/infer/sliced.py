"""Sliced inference on large scenes: overlapping tiles, batched on the device, merged without seam artefacts.

The detector resizes every input to its training size, so a whole 20000 px scene would shrink ships to
sub-pixel size. Instead the scene is cut into ``tile_size`` tiles (default: the model's training size, so
tiles are not resized at all) overlapping by ``overlap`` (default 0.2), read window by window
(:mod:`sarmae.data.scene`), and the per-tile boxes are merged in scene pixels.

Seams. A tile edge that is not a scene border cuts objects, and the detector returns the visible part
("fragment"). Every box within ``edge_margin`` px of such an interior edge is flagged as a fragment, and:

1. a fragment covered (intersection over the fragment's area >= ``seam_thr``) by a box of the same class
   that touches no interior edge is dropped: a neighbouring tile saw that object whole. Any object
   smaller than the overlap (``overlap * tile_size`` px) is always seen whole by some tile;
2. the remaining fragments (objects larger than the overlap, cut in every tile that sees them) are joined
   into their union when two fragments of the same class from different tiles agree inside the region both
   tiles see (IoU of the two boxes clipped to the tiles' intersection >= ``seam_thr``); chains join
   objects spanning three or more tiles;
3. duplicates of whole objects (seen whole in two overlapping tiles) are removed by class-wise NMS
   (``merge="nms"``: :func:`torchvision.ops.batched_nms` at ``iou``) or merged greedily into the union of
   the boxes they match (``merge="greedy"``, like SAHI's GREEDYNMM; threshold ``iou`` on ``merge_metric``:
   ``iou``, or ``ios`` = intersection over the smaller box). Fragments are already handled by steps 1-2, so
   the default metric is ``iou``: ``ios`` would also swallow a small object inside a larger box of its class.

``full_image_pass`` adds one pass over the whole scene shrunk to one tile, for objects larger than the
overlap; its boxes are whole views, so step 1 prefers them to fragments. Boxes with less than ``min_valid``
of their area on valid pixels (not nodata / NaN) are dropped; tiles without a valid pixel are not run at all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import batched_nms
from tqdm import tqdm

from sarmae.data.io import IntensityScaling
from sarmae.data.scene import Scene, open_scene, scene_size
from sarmae.errors import ConfigError, DataError
from sarmae.infer.detections import Detections
from sarmae.infer.detector_io import Detector, load_detector, pick_device
from sarmae.infer.geo import write_outputs

MERGES = ("nms", "greedy")
METRICS = ("ios", "iou")
EDGE_MARGIN = 2.0  # px: a box this close to an interior tile edge is treated as cut by it
SEAM_THR = 0.5
MIN_VALID = 0.5  # fraction of a box's pixels that must be valid (not nodata) to keep it


@dataclass(frozen=True)
class Tile:
    """A window of the scene (``x``, ``y``, ``w``, ``h`` in scene px) fed to the detector as a tile image.

    ``scale`` = tile-image px per scene px (1 for tiles, < 1 for the shrunk full-image pass). Tile images are
    padded with zeros to ``tile_size`` squares, so the scene's pixel scale is the same in every tile.
    """

    x: int
    y: int
    w: int
    h: int
    index: int = 0
    scale: float = 1.0


# A tile detector: batch of tile images (3, T, T) in [0, 1] and their tiles -> one torchvision-style dict per
# image with "boxes" (n, 4) xyxy in tile-image px, "scores" (n,), "labels" (n,) 1..K. A FasterRCNN fits
# (see :func:`model_detector`); tests inject fakes that only see what lies inside each tile.
TileDetector = Callable[[list[torch.Tensor], list[Tile]], list[dict[str, torch.Tensor]]]


def model_detector(detector: Detector, device: torch.device | str) -> TileDetector:
    """Wrap a loaded detector: its inference model for ``device`` (made once per device and detector; a bf16 copy
    on a CPU with bf16 instructions, see :meth:`~sarmae.infer.detector_io.Detector.inference_model`), no grad,
    batch moved to ``device``, outputs back on the CPU."""
    device = torch.device(device)
    model = detector.inference_model(device)

    @torch.no_grad()
    def detect(images: list[torch.Tensor], tiles: list[Tile]) -> list[dict[str, torch.Tensor]]:
        outputs = model([image.to(device, non_blocking=True) for image in images])
        return [{k: v.detach().cpu() for k, v in out.items()} for out in outputs]

    return detect


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)  # last tile flush with the border instead of hanging over it
    return starts


def tile_windows(width: int, height: int, tile_size: int, overlap: float) -> list[Tile]:
    """Row-major grid of tiles covering the scene; neighbours share ``round(tile_size * overlap)`` px or more."""
    stride = max(1, tile_size - round(tile_size * overlap))
    tiles = []
    for y in _starts(height, tile_size, stride):
        for x in _starts(width, tile_size, stride):
            tiles.append(Tile(x, y, min(tile_size, width), min(tile_size, height), index=len(tiles)))
    return tiles


# -- pairs of overlapping boxes -------------------------------------------------------------------------


def overlap_pairs(boxes: np.ndarray, labels: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``i < j`` of same-label boxes with a positive-area intersection, in about O(N) for local boxes.

    Boxes (N, 4) xyxy are hashed into the grid cells of size ``cell`` they cover; only boxes sharing a cell
    are compared, so a scene with 100k boxes never builds an N x N matrix.
    """
    n = len(boxes)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    c = np.floor(np.clip(boxes, 0, None) / cell).astype(np.int64)
    nx, ny = c[:, 2] - c[:, 0] + 1, c[:, 3] - c[:, 1] + 1
    counts = nx * ny
    owner = np.repeat(np.arange(n), counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    gx = c[owner, 0] + local % nx[owner]
    gy = c[owner, 1] + local // nx[owner]
    key = (labels[owner].astype(np.int64) * (gy.max() + 1) + gy) * (gx.max() + 1) + gx
    order = np.argsort(key, kind="stable")
    key, owner = key[order], owner[order]
    pos = np.arange(len(key))
    group_end = np.searchsorted(key, key, side="right")
    later = group_end - pos - 1  # entries after this one in the same cell
    first = np.repeat(pos, later)
    second = first + 1 + np.arange(later.sum()) - np.repeat(np.cumsum(later) - later, later)
    a, b = owner[first], owner[second]
    i, j = np.minimum(a, b), np.maximum(a, b)
    code = np.unique(i * n + j)
    i, j = code // n, code % n
    inter = _intersection(boxes[i], boxes[j])
    keep = inter > 0
    return i[keep], j[keep]


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise intersection areas of (M, 4) and (M, 4) xyxy boxes."""
    w = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    h = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def _area(b: np.ndarray) -> np.ndarray:
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = _intersection(a, b)
    return inter / np.maximum(_area(a) + _area(b) - inter, 1e-12)


def _ios(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _intersection(a, b) / np.maximum(np.minimum(_area(a), _area(b)), 1e-12)


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected-component id per node of the graph with edges (i, j) (union-find)."""
    parent = np.arange(n)

    def find(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for a, b in zip(i.tolist(), j.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(k) for k in range(n)], dtype=np.int64)


# -- merging --------------------------------------------------------------------------------------------


def resolve_seams(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, truncated: np.ndarray,
                  tile_of: np.ndarray, rects: np.ndarray, thr: float = SEAM_THR, cell: float = 512.0
                  ) -> tuple[Detections, dict]:
    """Steps 1-2 of the module docstring: drop covered fragments, join the others across tiles.

    ``truncated`` (N,) bool marks fragments, ``tile_of`` (N,) the tile index of each box and ``rects``
    (T, 4) the tiles' xyxy scene extents. Returns the detections (whole boxes first) and counts.
    """
    i, j = overlap_pairs(boxes, labels, cell)
    drop = np.zeros(len(boxes), bool)
    inter = _intersection(boxes[i], boxes[j])
    for frag, other in ((i, j), (j, i)):
        covered = truncated[frag] & ~truncated[other] & (inter / np.maximum(_area(boxes[frag]), 1e-12) >= thr)
        drop[frag[covered]] = True

    both = truncated[i] & truncated[j] & ~drop[i] & ~drop[j] & (tile_of[i] != tile_of[j])
    fi, fj = i[both], j[both]
    ti, tj = rects[tile_of[fi]], rects[tile_of[fj]]
    shared = np.concatenate([np.maximum(ti[:, :2], tj[:, :2]), np.minimum(ti[:, 2:], tj[:, 2:])], axis=1)
    ci, cj = _clip_to(boxes[fi], shared), _clip_to(boxes[fj], shared)
    agree = (_area(ci) > 0) & (_area(cj) > 0) & (_iou(ci, cj) >= thr)
    fi, fj = fi[agree], fj[agree]

    frags = np.flatnonzero(truncated & ~drop)
    whole = np.flatnonzero(~truncated)
    index = {int(k): n for n, k in enumerate(frags)}
    comp = _components(len(frags), np.array([index[int(k)] for k in fi], np.int64),
                       np.array([index[int(k)] for k in fj], np.int64))
    joined_boxes, joined_scores, joined_labels = [], [], []
    for root in np.unique(comp):
        members = frags[comp == root]
        group = boxes[members]
        joined_boxes.append([group[:, 0].min(), group[:, 1].min(), group[:, 2].max(), group[:, 3].max()])
        joined_scores.append(scores[members].max())
        joined_labels.append(labels[members[0]])
    out = Detections(
        np.concatenate([boxes[whole], np.asarray(joined_boxes, np.float64).reshape(-1, 4)]),
        np.concatenate([scores[whole], np.asarray(joined_scores, np.float32)]),
        np.concatenate([labels[whole], np.asarray(joined_labels, np.int64)]),
    )
    counts = {"fragments": int(truncated.sum()), "fragments_dropped": int(drop.sum()),
              "fragments_joined": int(len(frags) - len(joined_scores))}
    return out, counts


def _clip_to(boxes: np.ndarray, rects: np.ndarray) -> np.ndarray:
    return np.concatenate([np.maximum(boxes[:, :2], rects[:, :2]), np.minimum(boxes[:, 2:], rects[:, 2:])], axis=1)


def nms_merge(dets: Detections, iou: float) -> Detections:
    """Class-wise NMS (:func:`torchvision.ops.batched_nms`), kept boxes in descending score order."""
    if len(dets) == 0:
        return dets
    keep = batched_nms(torch.from_numpy(dets.boxes), torch.from_numpy(dets.scores).double(),
                       torch.from_numpy(dets.labels), iou).numpy()
    return Detections(dets.boxes[keep], dets.scores[keep], dets.labels[keep])


def greedy_merge(dets: Detections, thr: float, metric: str = "iou", cell: float = 512.0) -> Detections:
    """Greedy non-maximum merging: the best box absorbs every lower-scored box of its class that matches it
    (``metric`` >= ``thr``) and grows to their union; absorbed boxes are removed. Descending score order."""
    n = len(dets)
    if n == 0:
        return dets
    i, j = overlap_pairs(dets.boxes, dets.labels, cell)
    match = (_ios if metric == "ios" else _iou)(dets.boxes[i], dets.boxes[j]) >= thr
    i, j = i[match], j[match]
    order = np.argsort(-dets.scores, kind="stable")
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    # Directed edges from the better-ranked box to the other, as CSR lists.
    src = np.where(rank[i] < rank[j], i, j)
    dst = np.where(rank[i] < rank[j], j, i)
    by_src = np.argsort(src, kind="stable")
    src, dst = src[by_src], dst[by_src]
    starts = np.searchsorted(src, np.arange(n + 1))
    boxes = dets.boxes.copy()
    absorbed = np.zeros(n, bool)
    for k in order.tolist():
        if absorbed[k]:
            continue
        nbrs = dst[starts[k] : starts[k + 1]]
        nbrs = nbrs[~absorbed[nbrs]]
        if len(nbrs):
            group = np.vstack([boxes[k : k + 1], dets.boxes[nbrs]])
            boxes[k] = [group[:, 0].min(), group[:, 1].min(), group[:, 2].max(), group[:, 3].max()]
            absorbed[nbrs] = True
    keep = order[~absorbed[order]]
    return Detections(boxes[keep], dets.scores[keep], dets.labels[keep])


# -- per-tile post-processing ---------------------------------------------------------------------------


def _valid_fraction(boxes: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fraction of valid pixels inside each (n, 4) box (pixels the box touches), via an integral image."""
    h, w = valid.shape
    integral = np.zeros((h + 1, w + 1), np.int64)
    integral[1:, 1:] = valid.cumsum(0, dtype=np.int64).cumsum(1)
    x1 = np.clip(np.floor(boxes[:, 0]), 0, w).astype(np.int64)
    y1 = np.clip(np.floor(boxes[:, 1]), 0, h).astype(np.int64)
    x2 = np.clip(np.ceil(boxes[:, 2]), 0, w).astype(np.int64)
    y2 = np.clip(np.ceil(boxes[:, 3]), 0, h).astype(np.int64)
    total = integral[y2, x2] - integral[y1, x2] - integral[y2, x1] + integral[y1, x1]
    return total / np.maximum((x2 - x1) * (y2 - y1), 1)


def tile_detections(output: dict[str, torch.Tensor], tile: Tile, valid: np.ndarray, scene_w: int, scene_h: int,
                    score_threshold: float, edge_margin: float = EDGE_MARGIN, min_valid: float = MIN_VALID,
                    interior: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One tile's output -> ``(boxes (n, 4) scene px, scores, labels, truncated)`` after score, extent and
    nodata filtering. ``valid`` (h, w) covers the tile's real (unpadded) extent in tile-image px."""
    scores = output["scores"].float().numpy()
    keep = scores >= score_threshold
    boxes = output["boxes"].double().numpy()[keep]
    labels, scores = output["labels"].numpy().astype(np.int64)[keep], scores[keep]
    h, w = valid.shape
    boxes = np.clip(boxes, 0, [w, h, w, h])  # drop what lies on the padding
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
    keep = _valid_fraction(boxes, valid) >= min_valid
    boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
    truncated = np.zeros(len(boxes), bool)
    if interior:
        if tile.x > 0:
            truncated |= boxes[:, 0] <= edge_margin
        if tile.y > 0:
            truncated |= boxes[:, 1] <= edge_margin
        if tile.x + tile.w < scene_w:
            truncated |= boxes[:, 2] >= w - edge_margin
        if tile.y + tile.h < scene_h:
            truncated |= boxes[:, 3] >= h - edge_margin
    scene_boxes = boxes / tile.scale + [tile.x, tile.y, tile.x, tile.y]
    scene_boxes = np.clip(scene_boxes, 0, [scene_w, scene_h, scene_w, scene_h])
    return scene_boxes, scores, labels, truncated


def _pad(image: np.ndarray, size: int) -> torch.Tensor:
    """(h, w, 3) float32 -> (3, size, size) tensor, zero padded at the right / bottom."""
    canvas = np.zeros((size, size, 3), np.float32)
    canvas[: image.shape[0], : image.shape[1]] = image
    return torch.from_numpy(canvas).permute(2, 0, 1)


def _batches(scene: Scene, tiles: list[Tile], batch_size: int, tile_size: int, timing: dict
             ) -> Iterator[tuple[list[Tile], list[torch.Tensor], list[np.ndarray], int]]:
    """Yield ``(tiles, images, valid masks, tiles skipped)`` per batch; the next batch is read in a thread
    while the device works on the current one. Tiles without a valid pixel are skipped."""

    def read(chunk: list[Tile]):
        t0 = time.perf_counter()
        kept, images, masks = [], [], []
        for tile in chunk:
            image, valid = scene.read(tile.x, tile.y, tile.w, tile.h)
            if valid.any():
                kept.append(tile)
                images.append(_pad(image, tile_size))
                masks.append(valid)
        timing["read_s"] += time.perf_counter() - t0
        return kept, images, masks, len(chunk) - len(kept)

    chunks = [tiles[k : k + batch_size] for k in range(0, len(tiles), batch_size)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, chunks[0]) if chunks else None
        for n in range(len(chunks)):
            result = pending.result()
            pending = pool.submit(read, chunks[n + 1]) if n + 1 < len(chunks) else None
            yield result


def sliced_detect(
    scene: Scene,
    detector: TileDetector,
    tile_size: int,
    overlap: float = 0.2,
    merge: str = "nms",
    iou: float = 0.5,
    merge_metric: str = "iou",
    full_image_pass: bool = False,
    batch_size: int = 8,
    score_threshold: float = 0.3,
    progress: bool = True,
    edge_margin: float = EDGE_MARGIN,
    seam_thr: float = SEAM_THR,
    min_valid: float = MIN_VALID,
) -> tuple[Detections, dict]:
    """Run ``detector`` over the scene's tiles and merge (see the module docstring). Returns ``(detections,
    stats)``; stats count tiles (run / skipped), raw boxes, fragments and time spent reading / inferring."""
    check_options(tile_size, overlap, merge, iou, merge_metric, batch_size, score_threshold)
    t_start = time.perf_counter()
    W, H = scene.width, scene.height
    tiles = tile_windows(W, H, tile_size, overlap)
    rects = [[t.x, t.y, t.x + t.w, t.y + t.h] for t in tiles]
    timing = {"read_s": 0.0, "infer_s": 0.0}
    parts: list[tuple[np.ndarray, ...]] = []
    skipped = 0
    bar = tqdm(total=len(tiles), unit="tile", desc=scene.path.name, disable=not progress, dynamic_ncols=True)
    for chunk, images, masks, n_skipped in _batches(scene, tiles, batch_size, tile_size, timing):
        skipped += n_skipped
        if images:
            t0 = time.perf_counter()
            outputs = detector(images, chunk)
            timing["infer_s"] += time.perf_counter() - t0
            for tile, valid, out in zip(chunk, masks, outputs, strict=True):
                found = tile_detections(out, tile, valid, W, H, score_threshold, edge_margin, min_valid)
                parts.append((*found, np.full(len(found[1]), tile.index, np.int64)))
        bar.update(len(chunk) + n_skipped)
    bar.close()

    if full_image_pass and max(W, H) > tile_size:
        image, valid, scale = scene.overview(tile_size)
        whole = Tile(0, 0, W, H, index=len(tiles), scale=scale)
        rects.append([0, 0, W, H])
        if valid.any():
            t0 = time.perf_counter()
            out = detector([_pad(image, tile_size)], [whole])[0]
            timing["infer_s"] += time.perf_counter() - t0
            found = tile_detections(out, whole, valid, W, H, score_threshold, min_valid=min_valid, interior=False)
            big = np.maximum(found[0][:, 2] - found[0][:, 0], found[0][:, 3] - found[0][:, 1])
            big = big >= round(tile_size * overlap)  # smaller objects are seen whole, and sharper, by the tiles
            parts.append((*(a[big] for a in found), np.full(int(big.sum()), whole.index, np.int64)))

    t0 = time.perf_counter()
    if parts:
        boxes, scores, labels, truncated, tile_of = (np.concatenate(a) for a in zip(*parts))
    else:
        boxes, scores, labels = Detections.empty().boxes, Detections.empty().scores, Detections.empty().labels
        truncated, tile_of = np.zeros(0, bool), np.zeros(0, np.int64)
    cell = float(tile_size)
    dets, counts = resolve_seams(boxes, scores, labels, truncated, tile_of, np.asarray(rects, np.float64),
                                 seam_thr, cell)
    dets = nms_merge(dets, iou) if merge == "nms" else greedy_merge(dets, iou, merge_metric, cell)
    seconds = time.perf_counter() - t_start
    stats = {
        "tiles": len(tiles), "tiles_run": len(tiles) - skipped, "tiles_skipped": skipped,
        "raw_detections": int(len(scores)), **counts, "detections": len(dets),
        "read_s": round(timing["read_s"], 3), "infer_s": round(timing["infer_s"], 3),
        "merge_s": round(time.perf_counter() - t0, 3), "seconds": round(seconds, 3),
        "megapixels": round(W * H / 1e6, 3), "megapixels_per_s": round(W * H / 1e6 / max(seconds, 1e-9), 3),
    }
    return dets, stats


def check_options(tile_size: int, overlap: float, merge: str, iou: float, merge_metric: str, batch_size: int,
                  score_threshold: float) -> None:
    """ConfigErrors for option values that cannot work."""
    if int(tile_size) != tile_size or tile_size < 32:
        raise ConfigError(f"tile size {tile_size}: use an integer >= 32 (default: the model's img_size)")
    if not 0.0 <= overlap < 0.9:
        raise ConfigError(f"overlap {overlap}: use a fraction of the tile in [0, 0.9), e.g. 0.2")
    if merge not in MERGES:
        raise ConfigError(f"merge '{merge}': use one of {', '.join(MERGES)}")
    if merge_metric not in METRICS:
        raise ConfigError(f"merge metric '{merge_metric}': use one of {', '.join(METRICS)}")
    if not 0.0 < iou <= 1.0:
        raise ConfigError(f"merge threshold iou={iou}: use a value in (0, 1]")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ConfigError(f"batch size {batch_size}: use an integer >= 1")
    if not 0.0 <= score_threshold <= 1.0:
        raise ConfigError(f"score threshold {score_threshold}: use a value in [0, 1]")


# -- entry points ---------------------------------------------------------------------------------------


LARGE_TILES = 1.5  # an image with a side longer than this many tiles is sliced rather than shrunk


def is_large_size(width: int, height: int, tile_size: int) -> bool:
    """Whether an image of this size should be sliced: a side longer than :data:`LARGE_TILES` tiles."""
    return max(width, height) > LARGE_TILES * tile_size


def is_large(path: str | Path, tile_size: int) -> bool:
    """Whether ``path`` should go through :func:`predict_scene`: a georeferenced raster, or
    :func:`is_large_size`. Unreadable files return False, so the regular image path reports them."""
    try:
        width, height, georeferenced = scene_size(path)
    except DataError:
        return False
    return georeferenced or is_large_size(width, height, tile_size)


def predict_scene(
    module: Detector | str | Path,
    path: str | Path,
    out_dir: str | Path,
    tile_size: int | None = None,
    overlap: float = 0.2,
    merge: str = "nms",
    iou: float = 0.5,
    full_image_pass: bool = False,
    batch_size: int = 8,
    score_threshold: float = 0.3,
    device: str | torch.device = "auto",
    merge_metric: str = "iou",
    scaling: IntensityScaling | dict | str | None = None,
    progress: bool = True,
    preview_side: int = 2048,
) -> dict:
    """Detect objects on a large scene and write COCO JSON, CSV, GeoJSON and a preview PNG into ``out_dir``.

    ``module``: a loaded :class:`~sarmae.infer.detector_io.Detector` (:func:`~sarmae.infer.detector_io.load_detector`,
    ``Detector.build``) or a checkpoint path.
    ``scaling`` defaults to the checkpoint's ``data.scaling``; ``tile_size`` to ``model.img_size``. Returns
    a summary dict (scene size, tiles, detections per class, timing, scaling bounds, output paths), also
    written to ``STEM.summary.json``.
    """
    if isinstance(module, (str, Path)):
        module = load_detector(Path(module))
    cfg = getattr(module, "cfg", {}) or {}
    tile_size = int(tile_size or (cfg.get("model") or {}).get("img_size", 800))
    check_options(tile_size, overlap, merge, iou, merge_metric, batch_size, score_threshold)
    if scaling is None:
        scaling = (cfg.get("data") or {}).get("scaling")
    dev = pick_device(device) if isinstance(device, str) else device
    names = list(module.classes["names"])
    with open_scene(path, scaling) as scene:
        dets, stats = sliced_detect(scene, model_detector(module, dev), tile_size, overlap, merge, iou,
                                    merge_metric, full_image_pass, batch_size, score_threshold, progress)
        outputs = write_outputs(scene, dets, Path(out_dir), names, module.label_to_cat_id, preview_side)
        per_class = {name: int((dets.labels == k + 1).sum()) for k, name in enumerate(names)}
        summary = {
            "scene": str(scene.path), "width": scene.width, "height": scene.height, "tile_size": tile_size,
            "overlap": overlap, "merge": merge, "full_image_pass": full_image_pass,
            "device": str(dev), **stats, "per_class": per_class,
            "scaling": scene.stats, "georeferenced": scene.georef.ok, "georef": scene.georef.kind,
            "crs": str(scene.georef.crs) if scene.georef.ok else None,
            "outputs": {k: str(v) for k, v in outputs.items()},
        }
        summary_path = Path(out_dir) / f"{scene.path.stem}.summary.json"
        summary["outputs"]["summary"] = str(summary_path)
        summary_path.write_text(json.dumps(summary, indent=1))
    print(f"{scene.path.name}: {len(dets)} detections, {stats['tiles_run']}/{stats['tiles']} tiles "
          f"({stats['tiles_skipped']} all-nodata skipped), {stats['megapixels_per_s']} MP/s -> {Path(out_dir)}")
    return summary


__all__ = [
    "Detections", "Tile", "TileDetector", "greedy_merge", "is_large", "model_detector", "nms_merge",
    "overlap_pairs", "predict_scene", "resolve_seams", "sliced_detect", "tile_detections", "tile_windows",
]
