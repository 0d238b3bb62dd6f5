"""COCO / SARDet-100K detection dataset for torchvision detectors.

Layout: ``ROOT/Annotations/{split}.json`` with images in ``ROOT/JPEGImages/{split}/`` (the released
SARDet-100K) or flat in ``ROOT/JPEGImages/`` (the toolkit's config), resolved per file. The json is
parsed once, up front, with plain dicts (no pycocotools): every annotation error is reported at
construction, naming the json and the annotation, instead of hours into a run.

Boxes are packed into one array with per-image offsets, so forked loader workers share them instead
of touching (and copying) one Python object per image.
"""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from sarmae.data.io import IntensityScaling, read_image
from sarmae.errors import DataError

# SARDet-100K category ids 0..5, in this order (MSFA toolkit tuple).
SARDET_CLASSES: tuple[str, ...] = ("ship", "aircraft", "car", "tank", "bridge", "harbor")


# Verdicts of :func:`clip_box`, the one box rule of the loader and ``sarmae data check``.
BOX_KEPT, BOX_CLIPPED, BOX_DROPPED, BOX_NEGATIVE = "kept", "clipped", "dropped", "negative"


def clip_box(x: float, y: float, w: float, h: float, width: float, height: float
             ) -> tuple[str, tuple[float, float, float, float] | None]:
    """The box rule shared by :class:`CocoDetection` and ``sarmae data check``.

    COCO ``[x, y, w, h]`` on a ``width`` x ``height`` image (the json's size) -> ``(verdict, xyxy)``:

    * ``negative``: w or h < 0, not a COCO box -> an error (``xyxy`` None);
    * ``dropped``: nothing left after clipping to the image (zero width / height, or entirely outside) ->
      left out of the targets and counted (``xyxy`` None);
    * ``clipped``: partly outside (SARDet-100K keeps such boxes) -> the part inside the image;
    * ``kept``: inside the image, unchanged.
    """
    if w < 0 or h < 0:
        return BOX_NEGATIVE, None
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
    if x2 <= x1 or y2 <= y1:
        return BOX_DROPPED, None
    changed = x1 != x or y1 != y or x2 != x + w or y2 != y + h
    return (BOX_CLIPPED if changed else BOX_KEPT), (x1, y1, x2, y2)


def load_coco_json(path: str | Path) -> dict:
    """Load a COCO json and check its shape; ``info``/``licenses`` are added empty when missing
    (SARDet-100K has neither, and COCO evaluators expect them). ``annotations`` defaults to []."""
    path = Path(path)
    if not path.is_file():
        hint = ""
        if path.parent.is_dir():
            found = sorted(p.stem for p in path.parent.glob("*.json"))
            hint = f" (found: {', '.join(found)})" if found else " (no .json files there)"
        raise DataError(f"annotation file {path}: not found{hint}; expected ROOT/Annotations/<split>.json")
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno}); fix or re-export it") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{path}: cannot read JSON ({exc}); fix or re-export it") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not a COCO annotation file (no 'images' list at the top level)")
    annotations = data.setdefault("annotations", [])
    if not isinstance(annotations, list):
        raise DataError(f"{path}: 'annotations' must be a list of objects")
    data.setdefault("info", {})
    data.setdefault("licenses", [])
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not isinstance(img.get("file_name"), str) or "id" not in img:
            raise DataError(f"{path}: images[{i}] needs an 'id' and a 'file_name'; fix the json")
        if leaves_root(img["file_name"]):
            raise DataError(f"{path}: images[{i}] (id {img['id']}) file_name {img['file_name']!r} leaves the dataset "
                            "root; image files must lie under JPEGImages/ (give a relative path without '..')")
    return data


def leaves_root(file_name: str) -> bool:
    """Whether a COCO ``file_name`` points outside ``JPEGImages/``: absolute (``/x``, ``C:\\x``) or with a ``..``
    step. Such entries are refused everywhere, so an annotation file cannot make a run read files elsewhere."""
    posix = PurePosixPath(file_name.replace("\\", "/"))
    return posix.is_absolute() or ".." in posix.parts or bool(PureWindowsPath(file_name).drive)


def split_root(ann_file: str | Path) -> tuple[Path, str]:
    """``ROOT/Annotations/val.json`` -> ``(ROOT, "val")``; a json elsewhere uses its own folder as ROOT."""
    ann_file = Path(ann_file)
    root = ann_file.parent.parent if ann_file.parent.name == "Annotations" else ann_file.parent
    return root, ann_file.stem


def image_candidates(root: Path, split: str, file_name: str) -> tuple[Path, Path]:
    """Where an image may live: the per-split folder first, then the flat ``JPEGImages/``."""
    return root / "JPEGImages" / split / file_name, root / "JPEGImages" / file_name


def resolve_image_path(root: Path, split: str, file_name: str) -> Path | None:
    """The first existing candidate of :func:`image_candidates`, or None."""
    for candidate in image_candidates(root, split, file_name):
        if candidate.is_file():
            return candidate
    return None


class CocoDetection(Dataset):
    """Item ``i`` -> ``(image, target)``.

    ``image``: ``tv_tensors.Image`` float32 ``[3, H, W]`` in [0, 1]. ``target``: ``boxes``
    (``tv_tensors.BoundingBoxes`` XYXY float32 ``[N, 4]``, clipped to the image), ``labels`` int64 ``[N]``
    in ``1..K`` (0 is torchvision's background), ``image_id`` (the json id), ``orig_size`` ``(H, W)``.

    Labels follow the sorted category ids: ``label_to_cat_id`` / ``cat_id_to_label`` map both ways and
    ``class_names[label - 1]`` names a label. Crowd/ignore boxes and boxes empty after clipping (the rule of
    :func:`clip_box`) are left out of the targets and counted in ``stats``; the evaluator scores against
    ``coco_gt`` (the raw json).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        transforms: Any = None,
        scaling: IntensityScaling | None = None,
        keep_empty: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.scaling = scaling
        if not self.root.is_dir():
            raise DataError(
                f"dataset root {self.root}: no such folder; pass the folder with Annotations/ and JPEGImages/"
            )
        self.ann_file = self.root / "Annotations" / f"{split}.json"
        self.coco_gt = load_coco_json(self.ann_file)
        self._parse(keep_empty)

    def _parse(self, keep_empty: bool) -> None:
        src = self.ann_file
        categories = self.coco_gt.get("categories")
        if not isinstance(categories, list) or not categories:
            raise DataError(f"{src}: no 'categories' list; a detection json must name its classes")
        names: dict[int, str] = {}
        for cat in categories:
            cat_id = cat.get("id") if isinstance(cat, dict) else None
            if not isinstance(cat_id, int) or cat_id in names:
                raise DataError(f"{src}: category {cat!r} has a missing, non-integer or duplicate id")
            names[cat_id] = str(cat.get("name", cat_id))
        cat_ids = sorted(names)
        self.cat_id_to_label: dict[int, int] = {c: i + 1 for i, c in enumerate(cat_ids)}
        self.label_to_cat_id: dict[int, int] = {i + 1: c for i, c in enumerate(cat_ids)}
        self.class_names: tuple[str, ...] = tuple(names[c] for c in cat_ids)

        images = self.coco_gt["images"]
        index_of: dict[int, int] = {}
        sizes: list[tuple[int, int]] = []  # (H, W) from the json
        for i, img in enumerate(images):
            if not isinstance(img["id"], int):
                raise DataError(f"{src}: image id {img['id']!r} ({img['file_name']}) must be an integer")
            if img["id"] in index_of:
                raise DataError(f"{src}: image id {img['id']} appears twice; image ids must be unique")
            index_of[img["id"]] = i
            try:
                size = int(img["height"]), int(img["width"])
            except (KeyError, TypeError, ValueError):
                size = (0, 0)
            if min(size) <= 0:
                raise DataError(f"{src}: image id {img['id']} ({img['file_name']}) needs positive 'width' and 'height'")
            sizes.append(size)

        stats = dict.fromkeys(("clipped", "dropped_degenerate", "crowd_ignored"), 0)
        rows: list[tuple[int, float, float, float, float, int]] = []  # (image index, x1, y1, x2, y2, label)
        for n, ann in enumerate(self.coco_gt["annotations"]):
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            if not isinstance(image_id, int) or image_id not in index_of:
                raise DataError(
                    f"{src}: annotation {self._ann_id(ann, n)}: image_id {image_id!r} is not in 'images'; "
                    "fix or remove it"
                )
            cat_id = ann.get("category_id")
            label = self.cat_id_to_label.get(cat_id) if isinstance(cat_id, int) else None
            if label is None:
                raise DataError(
                    f"{src}: annotation {self._ann_id(ann, n)}: unknown category_id {cat_id!r} "
                    f"(known: {cat_ids}); fix the annotation or add the category"
                )
            bbox = ann.get("bbox")
            try:
                x, y, w, h = bbox
                x, y, w, h = float(x), float(y), float(w), float(h)
                if isinstance(bbox, str) or not math.isfinite(x + y + w + h):
                    raise ValueError
            except (TypeError, ValueError):
                raise DataError(
                    f"{src}: annotation {self._ann_id(ann, n)}: bbox {bbox!r} is not 4 finite numbers "
                    "[x, y, w, h]; fix it"
                ) from None
            i = index_of[image_id]
            img_h, img_w = sizes[i]
            verdict, xyxy = clip_box(x, y, w, h, img_w, img_h)
            if verdict == BOX_NEGATIVE:
                raise DataError(
                    f"{src}: annotation {self._ann_id(ann, n)}: negative box size w={w}, h={h}; "
                    "COCO boxes are [x, y, w, h] with w, h >= 0, fix it"
                )
            if ann.get("iscrowd", 0) or ann.get("ignore", 0):
                stats["crowd_ignored"] += 1
                continue
            if verdict == BOX_DROPPED:
                stats["dropped_degenerate"] += 1
                continue
            if verdict == BOX_CLIPPED:
                stats["clipped"] += 1
            rows.append((i, *xyxy, label))

        table = np.array(rows, dtype=np.float64).reshape(-1, 6)
        table = table[np.argsort(table[:, 0], kind="stable")]  # group by image, keep json order inside
        counts = np.bincount(table[:, 0].astype(np.int64), minlength=len(images))
        keep = np.arange(len(images)) if keep_empty else np.flatnonzero(counts)
        self._index = keep.astype(np.int64)  # position in coco_gt["images"]
        self._offsets = np.concatenate([[0], np.cumsum(counts[keep])]).astype(np.int64)
        self._boxes = table[:, 1:5].astype(np.float32)  # every kept box belongs to a kept image
        self._labels = table[:, 5].astype(np.int64)
        self._sizes = np.array(sizes, dtype=np.int64).reshape(-1, 2)[keep]
        empty = int((counts == 0).sum())
        stats.update(
            images=len(keep),
            images_in_file=len(images),
            annotations=len(self.coco_gt["annotations"]),
            boxes=len(table),
            empty_images=empty,
            empty_filtered=0 if keep_empty else empty,
        )
        self.stats: dict[str, int] = stats

    @staticmethod
    def _ann_id(ann: Any, n: int) -> str:
        return str(ann.get("id", f"#{n}")) if isinstance(ann, dict) else f"#{n}"

    @property
    def num_classes(self) -> int:
        """K, the number of object classes (the detector adds 1 for background)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self._index)

    def image_info(self, i: int) -> dict:
        """The json ``images`` entry of item ``i``."""
        return self.coco_gt["images"][int(self._index[i])]

    def image_path(self, i: int) -> Path:
        """Item ``i``'s file: ``JPEGImages/{split}/name`` if it exists, else ``JPEGImages/name``."""
        name = self.image_info(i)["file_name"]
        found = resolve_image_path(self.root, self.split, name)
        return found if found is not None else image_candidates(self.root, self.split, name)[0]

    def __getitem__(self, i: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        info = self.image_info(i)
        path = resolve_image_path(self.root, self.split, info["file_name"])
        if path is None:
            split_dir, flat_dir = (p.parent for p in image_candidates(self.root, self.split, info["file_name"]))
            raise DataError(
                f"{info['file_name']} (image id {info['id']} in {self.ann_file}) is in neither {split_dir}/ "
                f"nor {flat_dir}/; restore the file or remove it from the json"
            )
        array = read_image(path, self.scaling)
        height, width = array.shape[:2]
        if (height, width) != tuple(int(v) for v in self._sizes[i]):
            raise DataError(
                f"{path}: image is {width}x{height} pixels but {self.ann_file} says "
                f"{self._sizes[i][1]}x{self._sizes[i][0]} (image id {info['id']}); fix the json"
            )
        image = tv_tensors.Image(torch.from_numpy(array).permute(2, 0, 1).contiguous())
        start, stop = self._offsets[i], self._offsets[i + 1]
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(self._boxes[start:stop].copy()), format="XYXY", canvas_size=(height, width)
            ),
            "labels": torch.from_numpy(self._labels[start:stop].copy()),
            "image_id": int(info["id"]),
            "orig_size": (height, width),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
