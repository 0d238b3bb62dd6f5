"""``sarmae data check``: validate a COCO / SARDet-100K dataset before hours of training find the problem.

Every image is really decoded (with :func:`sarmae.data.io.read_image`, the function training uses), in a
thread pool because the decoders release the GIL; SARDet-100K's 116k images take minutes, not hours.

Severity follows what the training code can live with: missing or invalid json, a missing ``train`` split,
missing or corrupt images, json sizes that differ from the image file (the loader refuses such an image),
unknown category ids, non-positive image sizes, negative box sizes, duplicate ids and annotations of unknown
images are errors (``ok`` is False). Boxes follow the loader's rule (:func:`sarmae.data.coco.clip_box`):
boxes that leave the image are clipped (SARDet-100K keeps them on purpose) and boxes with nothing left
after clipping are dropped; both are warnings with counts, as are a missing ``val`` / ``test`` split and
duplicate file names.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sarmae.data.coco import (
    BOX_CLIPPED,
    BOX_DROPPED,
    BOX_NEGATIVE,
    clip_box,
    image_candidates,
    leaves_root,
    resolve_image_path,
)
from sarmae.data.io import IMAGE_EXTENSIONS, read_image
from sarmae.errors import DataError

KEEP_EXAMPLES = 20  # examples stored per problem; format() shows fewer
SHOW_EXAMPLES = 5
SIZE_BUCKETS = (128, 256, 512, 800, 1024, 2048)  # upper bounds of the long-side histogram
SPLIT_ORDER = ("train", "val", "test")
SMALL, MEDIUM = 32**2, 96**2  # COCO area ranges


@dataclass
class Problem:
    """One kind of problem in one split: how many times it occurred, and the first few examples."""

    severity: str  # "error" or "warning"
    split: str
    title: str
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, example: str) -> None:
        self.count += 1
        if len(self.examples) < KEEP_EXAMPLES:
            self.examples.append(example)

    def format(self, show: int = SHOW_EXAMPLES) -> str:
        head = f"{'ERROR' if self.severity == 'error' else 'WARNING'} [{self.split}] {self.title} ({self.count})"
        lines = [f"  {head}"] + [f"      {e}" for e in self.examples[:show]]
        if self.count > show:
            lines.append(f"      ... and {self.count - show} more")
        return "\n".join(lines)


@dataclass
class SplitStats:
    """Counts of one split (one ``Annotations/<split>.json``)."""

    name: str
    images: int = 0
    instances: int = 0
    empty_images: int = 0
    per_category: Counter = field(default_factory=Counter)  # category id -> instances
    box_sizes: Counter = field(default_factory=Counter)  # "small" / "medium" / "large" -> instances
    image_sizes: Counter = field(default_factory=Counter)  # (width, height) -> images
    categories: dict[int, str] = field(default_factory=dict)


@dataclass
class DatasetReport:
    """Result of :func:`check_dataset`; ``ok`` is False when the dataset cannot be used as it is."""

    root: Path
    splits: dict[str, SplitStats] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    unlabeled_images: int | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def problem(self, severity: str, split: str, title: str) -> Problem:
        """The problem record for (severity, split, title), created on first use."""
        for p in self.problems:
            if (p.severity, p.split, p.title) == (severity, split, title):
                return p
        p = Problem(severity, split, title)
        self.problems.append(p)
        return p

    def format(self, show: int = SHOW_EXAMPLES) -> str:
        """A readable multi-line report: counts, histograms, then the problems naming files and ids."""
        out = [f"dataset {self.root}"]
        stats = list(self.splits.values())
        if stats:
            out.append(f"  {'split':<12}{'images':>9}{'instances':>11}{'empty':>8}{'per image':>11}")
            for s in stats:
                per = s.instances / s.images if s.images else 0.0
                out.append(f"  {s.name:<12}{s.images:>9}{s.instances:>11}{s.empty_images:>8}{per:>11.2f}")
            out.append("")
            out.extend(self._category_table(stats))
            out.append("")
            boxes = sum((s.box_sizes for s in stats), Counter())
            total = sum(boxes.values())
            if total:
                out.append("  boxes by COCO area: " + ", ".join(
                    f"{k} {boxes[k]} ({100 * boxes[k] / total:.0f}%)" for k in ("small", "medium", "large")))
            out.extend(self._size_histogram(stats))
        if self.unlabeled_images is not None:
            out.append(f"  unlabeled images (Unlabeled/): {self.unlabeled_images}")
        out.append("")
        if self.problems:
            out.append(f"problems: {len(self.errors)} error kind(s), {len(self.warnings)} warning kind(s)")
            order = sorted(self.problems, key=lambda p: (p.severity != "error", p.split, p.title))
            out.extend(p.format(show) for p in order)
        else:
            out.append("problems: none")
        out.append("result: OK" if self.ok else "result: FAILED - the dataset is not usable as it is; fix the errors")
        return "\n".join(out)

    @staticmethod
    def _category_table(stats: list[SplitStats]) -> list[str]:
        names: dict[int, str] = {}
        for s in stats:
            for cid, name in s.categories.items():
                names.setdefault(cid, name)
        ids = sorted(set(names) | {c for s in stats for c in s.per_category},
                     key=lambda c: (0, c, "") if _is_int(c) else (1, 0, str(c)))
        head = f"  {'category':<16}{'id':>5}" + "".join(f"{s.name:>10}" for s in stats)
        rows = [head]
        for cid in ids:
            rows.append(f"  {names.get(cid, '(unknown)'):<16}{cid!s:>5}"
                        + "".join(f"{s.per_category.get(cid, 0):>10}" for s in stats))
        return rows

    @staticmethod
    def _size_histogram(stats: list[SplitStats]) -> list[str]:
        sizes = sum((s.image_sizes for s in stats), Counter())
        if not sizes:
            return []
        buckets: Counter = Counter()
        for (w, h), n in sizes.items():
            buckets[_bucket(max(w, h))] += n
        labels = [_bucket(b) for b in SIZE_BUCKETS] + [_bucket(SIZE_BUCKETS[-1] + 1)]
        peak = max(buckets.values())
        rows = ["  image sizes (long side):"]
        for label in labels:
            if buckets[label]:
                bar = "#" * max(1, round(40 * buckets[label] / peak))
                rows.append(f"    {label:>10} {bar} {buckets[label]}")
        common = ", ".join(f"{w}x{h}: {n}" for (w, h), n in sizes.most_common(3))
        rows.append(f"    most common: {common}")
        return rows


def _bucket(side: int) -> str:
    lo = 1
    for hi in SIZE_BUCKETS:
        if side <= hi:
            return f"{lo}-{hi}"
        lo = hi + 1
    return f">{SIZE_BUCKETS[-1]}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _find_splits(root: Path, splits: Sequence[str] | None) -> list[str]:
    if not root.is_dir():
        raise DataError(f"dataset root {root}: no such folder; pass the folder that holds Annotations/ "
                        "and JPEGImages/")
    found = sorted(p.stem for p in (root / "Annotations").glob("*.json")) if (root / "Annotations").is_dir() else []
    if not found:
        raise DataError(f"{root / 'Annotations'}: no *.json annotation files; expected "
                        "Annotations/{train,val,test}.json (SARDet-100K layout)")
    if splits:
        return list(dict.fromkeys(splits))
    return [s for s in SPLIT_ORDER if s in found] + [s for s in found if s not in SPLIT_ORDER]


def _load_json(path: Path, split: str, report: DatasetReport) -> dict | None:
    if not path.is_file():
        found = ", ".join(sorted(p.stem for p in path.parent.glob("*.json")))
        report.problem("error", split, "annotation file missing").add(f"{path} (found: {found})")
        return None
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        report.problem("error", split, "invalid JSON").add(f"{path}: {exc.msg} at line {exc.lineno}")
        return None
    except (OSError, UnicodeDecodeError) as exc:
        report.problem("error", split, "unreadable annotation file").add(f"{path}: {exc}")
        return None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        report.problem("error", split, "not a COCO annotation file").add(f"{path}: no top-level 'images' list")
        return None
    for key in ("annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            report.problem("error", split, f"'{key}' is not a list").add(str(path))
            return None
    return data


def _check_split(root: Path, split: str, data: dict, report: DatasetReport) -> tuple[SplitStats, list]:
    """Validate the json of one split; returns its stats and the image files to decode."""
    st = SplitStats(split)

    def err(title: str) -> Problem:
        return report.problem("error", split, title)

    def warn(title: str) -> Problem:
        return report.problem("warning", split, title)

    categories = data.get("categories", [])
    if not categories:
        err("no categories").add("the json has no 'categories' list; a detection json must name its classes")
    for cat in categories:
        cid = cat.get("id") if isinstance(cat, dict) else None
        if not _is_int(cid) or cid in st.categories:
            err("malformed or duplicate category").add(repr(cat)[:120])
            continue
        st.categories[cid] = str(cat.get("name", cid))

    images: dict[int, dict] = {}
    seen_files: dict[str, Any] = {}
    to_decode = []
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not _is_int(img.get("id")) or not isinstance(img.get("file_name"), str):
            err("malformed image entry (needs integer 'id' and 'file_name')").add(f"images[{i}]: {img!r}"[:160])
            continue
        iid, name = img["id"], img["file_name"]
        if iid in images:
            err("duplicate image id").add(f"image id {iid}: {images[iid]['file_name']} and {name}")
            continue
        images[iid] = img
        if leaves_root(name):
            err("file name leaves the dataset root (refused by every loader; give a path under JPEGImages/)").add(
                f"image id {iid}: {name}")
            continue
        if name in seen_files:
            warn("duplicate file name").add(f"{name}: image ids {seen_files[name]} and {iid}")
        seen_files[name] = iid
        w, h = img.get("width"), img.get("height")
        if not (_is_num(w) and _is_num(h)) or w <= 0 or h <= 0:
            err("missing or non-positive image size").add(f"image id {iid} ({name}): width={w!r}, height={h!r}")
        path = resolve_image_path(root, split, name)
        if path is None:
            err("missing image file").add(str(image_candidates(root, split, name)[0].relative_to(root)))
        else:
            to_decode.append((split, iid, name, path, w, h))
    st.images = len(images)

    ann_ids: dict[Any, int] = {}
    with_boxes: set[int] = set()
    for n, ann in enumerate(data.get("annotations", [])):
        if not isinstance(ann, dict):
            err("malformed annotation").add(f"annotations[{n}]: {ann!r}"[:160])
            continue
        aid = ann.get("id")
        where = f"annotation {aid}" if aid is not None else f"annotations[{n}]"
        if not _is_int(aid):
            err("missing or non-integer annotation id").add(f"annotations[{n}]: id={aid!r}")
        elif aid in ann_ids:
            err("duplicate annotation id").add(f"annotation id {aid} (annotations[{ann_ids[aid]}] and [{n}])")
        else:
            ann_ids[aid] = n
        iid, cid = ann.get("image_id"), ann.get("category_id")
        img = images.get(iid) if _is_int(iid) else None
        if img is None:
            err("annotation of an image id that is not in 'images'").add(f"{where}: image_id={iid!r}")
        if cid not in st.categories:
            err("unknown category id").add(f"{where}: category_id={cid!r} (known: {sorted(st.categories)})")
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_num(v) for v in bbox):
            err("bbox is not 4 finite numbers [x, y, w, h]").add(f"{where}: bbox={bbox!r}"[:160])
            continue
        x, y, w, h = (float(v) for v in bbox)
        label = f"{where}" + (f" in {img['file_name']}" if img is not None else "")
        iw, ih = (img.get("width"), img.get("height")) if img is not None else (None, None)
        sized = _is_num(iw) and _is_num(ih) and iw > 0 and ih > 0
        verdict, _ = clip_box(x, y, w, h, iw if sized else math.inf, ih if sized else math.inf)
        if verdict == BOX_NEGATIVE:
            err("negative box size (w or h < 0)").add(f"{label}: bbox={list(bbox)}")
            continue
        crowd = bool(ann.get("iscrowd", 0) or ann.get("ignore", 0))  # the loader leaves these out anyway
        if verdict == BOX_DROPPED:
            if not crowd:
                warn("box empty after clipping to the image (the loader drops it)").add(
                    f"{label} ({iw}x{ih}): bbox={list(bbox)}" if sized else f"{label}: bbox={list(bbox)}")
            continue
        st.instances += 1
        st.per_category[cid] += 1
        area = w * h
        st.box_sizes["small" if area < SMALL else "medium" if area < MEDIUM else "large"] += 1
        if img is not None:
            with_boxes.add(iid)
            if verdict == BOX_CLIPPED and not crowd:
                warn("box out of image bounds (kept, like SARDet-100K; the loader clips it)").add(
                    f"{label} ({iw}x{ih}): bbox={list(bbox)}")
    st.empty_images = len(images) - len(with_boxes)
    return st, to_decode


def _decode(item: tuple) -> tuple[tuple, tuple[int, int] | None, str | None]:
    try:
        arr = read_image(item[3])
    except DataError as exc:
        return item, None, str(exc)
    except Exception as exc:  # a checker reports, it does not crash
        return item, None, f"{item[3]}: {type(exc).__name__}: {exc}"
    return item, (int(arr.shape[1]), int(arr.shape[0])), None


def _unlabeled_files(root: Path) -> list[Path]:
    folder = root / "Unlabeled"
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def check_dataset(
    root: str | Path, splits: Sequence[str] | None = None, workers: int | None = None,
    progress: bool | None = None,
) -> DatasetReport:
    """Validate ``root`` (``Annotations/<split>.json`` + ``JPEGImages/[<split>/]``) and decode every image.

    ``splits`` defaults to every json in ``Annotations/``; without ``splits`` an ``Unlabeled/`` folder is
    decoded too, and a missing ``train`` (error) / ``val`` / ``test`` (warning) split is reported. Raises
    ``DataError`` for a missing root or when there is no annotation json at all; everything else is collected
    into the returned :class:`DatasetReport`. ``progress`` None shows a tqdm bar from 200 images on.
    """
    root = Path(root)
    names = _find_splits(root, splits)
    report = DatasetReport(root)
    if not splits:
        _report_missing_splits(root, names, report)
    jobs: list[tuple] = []
    for split in names:
        data = _load_json(root / "Annotations" / f"{split}.json", split, report)
        if data is None:
            continue
        stats, to_decode = _check_split(root, split, data, report)
        report.splits[split] = stats
        jobs.extend(to_decode)
    if not splits and (root / "Unlabeled").is_dir():
        files = _unlabeled_files(root)
        report.unlabeled_images = len(files)
        jobs.extend(("unlabeled", None, p.name, p, None, None) for p in files)
    for item, size, error in _decode_all(jobs, workers, progress):
        _record_decode(root, report, item, size, error)
    return report


def _report_missing_splits(root: Path, found: list[str], report: DatasetReport) -> None:
    """A dataset without ``train`` cannot be trained on (error); a missing ``val`` / ``test`` is a warning."""
    for split in SPLIT_ORDER:
        if split not in found:
            severity = "error" if split == "train" else "warning"
            use = "fine-tuning and pre-training read it" if split == "train" else \
                "fine-tuning validates on val" if split == "val" else "Table 1 is measured on test"
            report.problem(severity, split, "split missing").add(
                f"{root / 'Annotations' / f'{split}.json'} does not exist ({use}); "
                f"found: {', '.join(found)}")


def _decode_all(jobs: list[tuple], workers: int | None, progress: bool | None) -> Iterable:
    from tqdm import tqdm

    workers = workers or min(8, os.cpu_count() or 1)
    disable = len(jobs) < 200 if progress is None else not progress
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from tqdm(pool.map(_decode, jobs, chunksize=16), total=len(jobs), desc="check images",
                        unit="img", disable=disable)


def _record_decode(root: Path, report: DatasetReport, item: tuple, size, error: str | None) -> None:
    split, iid, name, path, w, h = item
    if error is not None:
        severity = "warning" if split == "unlabeled" else "error"
        report.problem(severity, split, "unreadable, corrupt or truncated image").add(error)
        return
    if split == "unlabeled":
        return
    report.splits[split].image_sizes[size] += 1
    if _is_num(w) and _is_num(h) and (w, h) != size:
        report.problem("error", split, "listed size differs from the file (the loader refuses the image)").add(
            f"image id {iid} ({path.relative_to(root)}): json {w}x{h}, file {size[0]}x{size[1]}")
