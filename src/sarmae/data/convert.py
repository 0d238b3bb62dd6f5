"""``sarmae data convert``: Pascal VOC / YOLO / DOTA / COCO detection labels -> the SARDet-100K layout.

Output (what the rest of sarmae reads): ``OUT/Annotations/<split>.json`` (COCO, 0-based category ids) and the
images in ``OUT/JPEGImages/<split>/``, renamed to 7-digit numbers like SARDet-100K (``0000001.jpg``; the
extension is kept, lower-cased). The image id equals the file number; numbers continue after the highest one
already in ``OUT/JPEGImages/`` so that splits converted one after another never share a number (the official
toolkit config reads all splits from one flat folder). Images are hard-linked, symlinked when a hard link is
impossible (another file system), or copied with ``copy=True``. Each written image entry keeps its source as
``source_file`` (relative to SRC). A report is printed and merged into ``OUT/convert_report.json`` under the
split's name.

Inputs (``fmt``):

* ``voc``: ``SRC/Annotations/**/*.xml`` (or the xml files in SRC itself) with ``filename``, ``size``, and
  ``object/name``, ``object/bndbox/{xmin,ymin,xmax,ymax}``, ``object/difficult``; images in
  ``SRC/JPEGImages/`` or ``SRC/images/``, else next to the xml. An image is found by the xml's ``filename``,
  then by the xml's stem with any image extension. When ``SRC/ImageSets/Main/<split>.txt`` exists only the
  ids it lists are converted. Corner values are taken as given (``w = xmax - xmin``, as mmdet's VOC -> COCO
  converter does), not shifted by Pascal VOC's 1-based pixel index.
* ``yolo``: ``SRC/images/`` + ``SRC/labels/`` mirrored by relative path (``images/<split>/`` + ``labels/<split>/``
  when both exist), or one flat folder of images and same-stem ``.txt`` files. Lines ``cls cx cy w h``
  normalised to the image size; a polygon line ``cls x1 y1 ... xn yn`` (YOLO-OBB / -seg, n >= 3) gives its
  enclosing box. Class names: from ``data.yaml``/``dataset.yaml`` ``names:`` or ``classes.txt``/``obj.names``
  (in SRC or the labels folder); without such a file ``--classes`` names the ids in order.
* ``dota``: ``SRC/images/`` + ``SRC/labelTxt/`` (or ``annfiles/``, ``labels/``; RSAR uses ``annfiles/``) with
  ``x1 y1 x2 y2 x3 y3 x4 y4 class [difficult]`` per line, the ``imagesource:``/``gsd:`` header lines skipped;
  a polygon becomes its enclosing horizontal box.
* ``coco``: a COCO json (SRC itself, ``SRC/Annotations/<split>.json``, or the only ``*.json`` in SRC); image
  ``file_name`` is looked up under ``JPEGImages/<split>/``, ``JPEGImages/``, ``images/`` and next to the json.
  Categories are matched by name and re-numbered; ``iscrowd``/``ignore`` are copied. Images of the json
  without annotations are kept as empty images; files not listed in the json are not converted.

Classes (``classes``): ``"sardet"`` = the six SARDet-100K classes in toolkit order; ``"a,b,c"`` fixes the order
and the ids (0-based); ``"ship=vessel+boat,aircraft"`` additionally maps the listed source names onto a class.
Names match case-insensitively and exactly: nothing else is renamed silently; boxes of other names are dropped
and counted per name. Without ``classes``: YOLO keeps its names-file order, COCO its categories in id order,
VOC/DOTA use the names found sorted alphabetically (first spelling seen), so separately converted splits agree
as long as they contain the same classes; pass ``--classes`` to be sure.

Boxes: clipped to the image read from the file (size from the header: Pillow, or tifffile / rasterio for
TIFF, via :func:`sarmae.data.scene.scene_size`) by :func:`sarmae.data.coco.clip_box`, the rule of the loader
and of ``data check``; a box with w or h <= 0 in the label is dropped as degenerate, one with no area left
inside the image as outside the image. A label file's stated size that differs from the file is reported and
the file's size is used (``data check`` refuses a json size that differs from the file).
``difficult`` objects (VOC ``<difficult>1``, DOTA difficult >= 1) follow ``difficult``: ``ignore`` (default)
writes them with ``ignore: 1`` AND ``iscrowd: 1``: the loader skips both flags in training, but COCO
evaluation (pycocotools and faster-coco-eval) honours only ``iscrowd``, so only both flags make a difficult
object neither a hit nor a miss (Pascal VOC's own protocol); ``keep`` writes them as ordinary boxes; ``drop``
leaves them out (counted).

Nothing is written until every label file has been parsed: bad input raises a one-line ``DataError`` naming
the file (and the line for text formats; the line and column of an XML syntax error). Images go to a hidden
staging folder that is renamed into place, and the json is written to a temporary file and ``os.replace``d,
so an interrupted conversion leaves no half-written split. An existing ``Annotations/<split>.json`` or
non-empty ``JPEGImages/<split>/`` is refused. Run ``sarmae data check OUT`` afterwards: sizes here come from
image headers, the check decodes every image.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from sarmae.data.coco import (
    BOX_CLIPPED,
    BOX_DROPPED,
    SARDET_CLASSES,
    clip_box,
    image_candidates,
    load_coco_json,
    split_root,
)
from sarmae.data.io import IMAGE_EXTENSIONS
from sarmae.data.scene import scene_size
from sarmae.errors import ConfigError, DataError
from sarmae.files import write_json_atomic

FORMATS: tuple[str, ...] = ("voc", "yolo", "dota", "coco")
DIFFICULT_POLICIES: tuple[str, ...] = ("ignore", "keep", "drop")
REPORT_NAME = "convert_report.json"
KEEP_EXAMPLES = 20  # examples stored per tally; format() shows fewer
SHOW_EXAMPLES = 3
YOLO_NAME_FILES: tuple[str, ...] = ("data.yaml", "dataset.yaml", "classes.txt", "obj.names")
DOTA_LABEL_DIRS: tuple[str, ...] = ("labelTxt", "annfiles", "labels")
DOTA_HEADERS: tuple[str, ...] = ("imagesource:", "gsd:")

# Reasons a box is not written (keys of ConvertReport.dropped).
UNKNOWN_CLASS = "unknown class"
DEGENERATE = "degenerate box (w or h <= 0 in the label)"
OUTSIDE = "outside the image (nothing left after clipping)"
DIFFICULT_DROPPED = "difficult (--difficult drop)"
UNREADABLE = "unreadable image"
MISSING_IMAGE = "missing image (the label file names an image that is not there)"
NO_IMAGE = "label file without image (no image with its stem)"
DUPLICATE = "second label file for the same image"


# --------------------------------------------------------------------------------------------------- report


@dataclass
class Tally:
    """A count and the first few examples (file names, lines)."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, example: str, n: int = 1) -> None:
        self.count += n
        if len(self.examples) < KEEP_EXAMPLES:
            self.examples.append(example)

    def to_dict(self) -> dict:
        return {"count": self.count, "examples": list(self.examples)}


@dataclass
class ConvertReport:
    """What a conversion wrote and what it left out, and why; ``format()`` prints it, ``to_dict()`` saves it."""

    fmt: str
    source: Path
    out: Path
    split: str
    classes: list[str] = field(default_factory=list)
    images_written: int = 0
    empty_images: int = 0  # written images without any box
    boxes_written: Counter = field(default_factory=Counter)  # class name -> boxes
    ignore_marked: int = 0  # written with ignore/iscrowd because difficult (or copied from a COCO source)
    clipped: Tally = field(default_factory=Tally)
    dropped: dict[str, Tally] = field(default_factory=dict)  # reason -> boxes
    unknown_names: Counter = field(default_factory=Counter)  # source class name -> dropped boxes
    images_without_labels: Tally = field(default_factory=Tally)
    label_files_without_image: Tally = field(default_factory=Tally)
    missing_images: Tally = field(default_factory=Tally)
    unreadable_images: Tally = field(default_factory=Tally)
    size_mismatches: Tally = field(default_factory=Tally)
    placed: Counter = field(default_factory=Counter)  # hardlinked / symlinked / copied
    notes: list[str] = field(default_factory=list)

    def drop(self, reason: str, example: str, n: int = 1) -> None:
        if n > 0:
            self.dropped.setdefault(reason, Tally()).add(example, n)

    @property
    def boxes_dropped(self) -> int:
        return sum(t.count for t in self.dropped.values())

    def to_dict(self) -> dict:
        return {
            "format": self.fmt,
            "source": str(self.source),
            "out": str(self.out),
            "split": self.split,
            "annotation_file": str(self.out / "Annotations" / f"{self.split}.json"),
            "categories": [{"id": i, "name": n} for i, n in enumerate(self.classes)],
            "images_written": self.images_written,
            "empty_images": self.empty_images,
            "images_placed": dict(self.placed),
            "boxes_written": {n: self.boxes_written.get(n, 0) for n in self.classes},
            "boxes_written_total": sum(self.boxes_written.values()),
            "boxes_marked_ignore": self.ignore_marked,
            "boxes_clipped": self.clipped.to_dict(),
            "boxes_dropped_total": self.boxes_dropped,
            "boxes_dropped": {reason: t.to_dict() for reason, t in self.dropped.items()},
            "unknown_class_names": dict(self.unknown_names.most_common()),
            "images_without_labels": self.images_without_labels.to_dict(),
            "label_files_without_image": self.label_files_without_image.to_dict(),
            "missing_images": self.missing_images.to_dict(),
            "unreadable_images": self.unreadable_images.to_dict(),
            "size_mismatches": self.size_mismatches.to_dict(),
            "notes": list(self.notes),
        }

    def format(self, show: int = SHOW_EXAMPLES) -> str:
        def examples(t: Tally, indent: str = "      ") -> list[str]:
            rows = [f"{indent}{e}" for e in t.examples[:show]]
            return rows + ([f"{indent}... and {t.count - show} more"] if t.count > show else [])

        out = [f"converted {self.fmt} {self.source} -> {self.out / 'Annotations' / f'{self.split}.json'}"]
        placed = ", ".join(f"{k} {v}" for k, v in sorted(self.placed.items()))
        out.append(f"  images written: {self.images_written} ({placed or 'none'}; "
                   f"{self.empty_images} without boxes) in {self.out / 'JPEGImages' / self.split}")
        total = sum(self.boxes_written.values())
        per = ", ".join(f"{i} {n} {self.boxes_written.get(n, 0)}" for i, n in enumerate(self.classes))
        out.append(f"  boxes written: {total}  [{per}]")
        if self.ignore_marked:
            out.append(f"    {self.ignore_marked} of them marked ignore (left out of training and of COCO scoring)")
        if self.clipped.count:
            out.append(f"    {self.clipped.count} clipped to the image")
            out.extend(examples(self.clipped))
        out.append(f"  boxes dropped: {self.boxes_dropped}")
        for reason, t in sorted(self.dropped.items(), key=lambda kv: -kv[1].count):
            out.append(f"    {reason}: {t.count}")
            if reason == UNKNOWN_CLASS:
                names = ", ".join(f"{n!r} {c}" for n, c in self.unknown_names.most_common(10))
                out.append(f"      names: {names}; keep them with --classes NAME=SOURCE_NAME (e.g. ship=vessel)")
            else:
                out.extend(examples(t))
        for title, t in (
            ("label files without image", self.label_files_without_image),
            ("label files naming a missing image", self.missing_images),
            ("unreadable images (not written)", self.unreadable_images),
            ("images without labels (written as empty images)", self.images_without_labels),
            ("label sizes that differ from the image file (file size used)", self.size_mismatches),
        ):
            if t.count:
                out.append(f"  {title}: {t.count}")
                out.extend(examples(t))
        out.extend(f"  note: {n}" for n in self.notes)
        out.append(f"  report: {self.out / REPORT_NAME}")
        out.append(f"next: sarmae data check {self.out}")
        return "\n".join(out)


# --------------------------------------------------------------------------------------------------- classes


@dataclass(frozen=True)
class ClassSpec:
    """Target classes in id order and the lower-cased source names (class names and aliases) that map to them."""

    names: tuple[str, ...]
    lookup: dict[str, int]


def parse_classes(text: str | None) -> ClassSpec | None:
    """``--classes``: ``sardet``, ``a,b,c`` or ``a=alias1+alias2,b``; None -> None (collect from the labels)."""
    if text is None:
        return None
    if text.strip().lower() == "sardet":
        return ClassSpec(SARDET_CLASSES, {n: i for i, n in enumerate(SARDET_CLASSES)})
    names: list[str] = []
    lookup: dict[str, int] = {}
    for item in text.split(","):
        name, _, aliases = item.partition("=")
        name = name.strip()
        if not name:
            raise ConfigError(f"--classes {text!r}: empty class name; use e.g. 'ship,aircraft' or 'sardet'")
        for source in [name, *(a.strip() for a in aliases.split("+") if aliases)]:
            if not source:
                raise ConfigError(f"--classes {text!r}: empty alias in {item.strip()!r}; use NAME=ALIAS1+ALIAS2")
            key = source.lower()
            if key in lookup:
                raise ConfigError(f"--classes {text!r}: {source!r} is named twice (names match case-insensitively)")
            lookup[key] = len(names)
        names.append(name)
    return ClassSpec(tuple(names), lookup)


def _spec_from_names(names: list[str], origin: str) -> ClassSpec:
    lookup: dict[str, int] = {}
    for i, n in enumerate(names):
        if n.lower() in lookup:
            raise DataError(f"{origin}: class name {n!r} appears twice (names match case-insensitively); "
                            "pass --classes to fix the class list")
        lookup[n.lower()] = i
    return ClassSpec(tuple(names), lookup)


# --------------------------------------------------------------------------------------------------- sources


@dataclass
class _Object:
    name: str  # source class name
    box: tuple[float, float, float, float]  # x1, y1, x2, y2: pixels, or fractions of the image when normalised
    where: str  # "labels/a.txt:3", for the report
    difficult: bool = False
    iscrowd: int = 0  # copied from a COCO source
    ignore: int = 0


@dataclass
class _Entry:
    image: Path | None  # source image; None: the label file has none
    label: str | None  # label file (relative to SRC) or None for an image without labels
    objects: list[_Object] = field(default_factory=list)
    declared: tuple[int, int] | None = None  # (width, height) stated by the label file
    normalised: bool = False  # YOLO: boxes are fractions of the image size


@dataclass
class _Source:
    entries: list[_Entry]
    class_order: list[str] | None = None  # the source's own class list (YOLO names file, COCO categories)
    class_origin: str = ""


def _rel(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def _walk(root: Path, suffixes: tuple[str, ...], skip: Path) -> list[Path]:
    """Files under ``root`` with one of ``suffixes`` (case-insensitive), sorted; hidden folders and ``skip`` pruned."""
    found = []
    skip = skip.resolve()
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (Path(folder) / d).resolve() != skip)
        found.extend(Path(folder) / f for f in files if Path(f).suffix.lower() in suffixes and not f.startswith("."))
    return sorted(found)


class _ImageIndex:
    """Every image file under some folders, findable by relative path, name, or stem."""

    def __init__(self, roots: list[Path], skip: Path) -> None:
        self.roots = roots
        self.files: list[Path] = []
        self.by_rel: dict[str, Path] = {}
        self.by_rel_stem: dict[str, Path] = {}
        self.by_name: dict[str, list[Path]] = {}
        self.by_stem: dict[str, list[Path]] = {}
        for root in roots:
            for path in _walk(root, IMAGE_EXTENSIONS, skip):
                rel = PurePosixPath(path.relative_to(root).as_posix())
                self.files.append(path)
                self.by_rel.setdefault(str(rel), path)
                self.by_rel_stem.setdefault(str(rel.with_suffix("")), path)
                self.by_name.setdefault(path.name, []).append(path)
                self.by_stem.setdefault(path.stem, []).append(path)

    def find(self, file_name: str | None, rel_stem: str) -> Path | None:
        """By ``file_name`` (relative path, then bare name), then the label's relative stem, then a unique stem."""
        if file_name:
            name = PurePosixPath(file_name.replace("\\", "/"))
            if str(name) in self.by_rel:
                return self.by_rel[str(name)]
            if len(self.by_name.get(name.name, [])) == 1:
                return self.by_name[name.name][0]
        if rel_stem in self.by_rel_stem:
            return self.by_rel_stem[rel_stem]
        stem = PurePosixPath(file_name.replace("\\", "/")).stem if file_name else PurePosixPath(rel_stem).name
        candidates = self.by_stem.get(stem, [])
        return candidates[0] if len(candidates) == 1 else None


def _number(text: str | None, what: str) -> float:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"{what} {text!r} is not a number")
    return value


def _read_voc(src: Path, split: str, out: Path, report: ConvertReport) -> _Source:
    if not src.is_dir():
        raise DataError(f"{src}: --from voc needs a folder with Annotations/*.xml and JPEGImages/, not a file")
    ann_dir = src / "Annotations" if (src / "Annotations").is_dir() else src
    xmls = _walk(ann_dir, (".xml",), out)
    if not xmls:
        raise DataError(f"{ann_dir}: no .xml files; --from voc expects Pascal VOC files in Annotations/")
    image_roots = [d for d in (src / "JPEGImages", src / "images") if d.is_dir()] or [ann_dir]
    wanted: set[str] | None = None
    split_list = src / "ImageSets" / "Main" / f"{split}.txt"
    if split_list.is_file():
        wanted = {line.split()[0] for line in split_list.read_text().splitlines() if line.strip()}
        report.notes.append(f"only the {len(wanted)} ids of {_rel(split_list, src)} were converted")
        xmls = [x for x in xmls if x.stem in wanted]
    index = _ImageIndex(image_roots, out)
    entries = []
    for xml in xmls:
        label = _rel(xml, src)
        file_name, declared, objects = _parse_voc(xml, label)
        rel_stem = xml.relative_to(ann_dir).with_suffix("").as_posix()
        image = index.find(file_name, rel_stem)
        if image is None:
            report.missing_images.add(f"{label}: {file_name or xml.stem + '.*'} not in "
                                      f"{', '.join(_rel(r, src) or '.' for r in image_roots)}")
            report.drop(MISSING_IMAGE, label, len(objects))
            continue
        entries.append(_Entry(image, label, objects, declared))
    used = {e.image for e in entries}
    for path in index.files:
        if path not in used and (wanted is None or path.stem in wanted):
            report.images_without_labels.add(_rel(path, src))
            entries.append(_Entry(path, None))
    return _Source(entries)


def _parse_voc(xml: Path, label: str) -> tuple[str | None, tuple[int, int] | None, list[_Object]]:
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as exc:
        line, column = exc.position
        reason = str(exc).split(":")[0]
        raise DataError(f"{xml}: line {line}, column {column + 1}: malformed XML ({reason}); fix or remove the file"
                        ) from None
    except OSError as exc:
        raise DataError(f"{xml}: cannot read ({exc.strerror or exc})") from None
    if root.tag != "annotation":
        raise DataError(f"{xml}: root element <{root.tag}> is not <annotation>; not a Pascal VOC file")
    file_name = (root.findtext("filename") or "").strip() or None
    declared = None
    size = root.find("size")
    if size is not None:
        try:
            w, h = (_number(size.findtext(k), f"<size><{k}>") for k in ("width", "height"))
        except ValueError as exc:
            raise DataError(f"{xml}: {exc}; fix or remove <size>") from None
        declared = (int(w), int(h)) if w > 0 and h > 0 else None  # 0 = unknown in some exports
    objects = []
    for k, obj in enumerate(root.findall("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataError(f"{xml}: <object> {k} has no <name>; fix the file")
        box = obj.find("bndbox")
        if box is None:
            rotated = " (rotated <robndbox> is not supported: export horizontal boxes)" if obj.find(
                "robndbox") is not None else ""
            raise DataError(f"{xml}: <object> {k} ({name}) has no <bndbox>{rotated}; fix the file")
        try:
            corners = tuple(_number(box.findtext(t), f"<{t}>") for t in ("xmin", "ymin", "xmax", "ymax"))
            flag = (obj.findtext("difficult") or "0").strip() or "0"
            difficult = _number(flag, "<difficult>") >= 1
        except ValueError as exc:
            raise DataError(f"{xml}: <object> {k} ({name}): {exc}; fix the file") from None
        objects.append(_Object(name, corners, f"{label} object {k}", difficult=difficult))  # type: ignore[arg-type]
    return file_name, declared, objects


def _yolo_names(folders: list[Path]) -> tuple[list[str], Path] | None:
    for folder in dict.fromkeys(folders):
        for file_name in YOLO_NAME_FILES:
            path = folder / file_name
            if not path.is_file():
                continue
            if path.suffix == ".yaml":
                import yaml

                try:
                    data = yaml.safe_load(path.read_text())
                except (yaml.YAMLError, UnicodeDecodeError) as exc:
                    raise DataError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}); fix it") from None
                names = data.get("names") if isinstance(data, dict) else None
                if names is None:
                    continue
                if isinstance(names, dict):
                    try:
                        ids = sorted(int(k) for k in names)
                    except (TypeError, ValueError):
                        ids = []
                    if ids != list(range(len(names))):
                        raise DataError(f"{path}: 'names' keys must be the class ids 0..{len(names) - 1}")
                    names = [names[k] if k in names else names[str(k)] for k in ids]
                if not isinstance(names, list) or not names:
                    raise DataError(f"{path}: 'names' must be a non-empty list (or an id -> name mapping)")
                return [str(n).strip() for n in names], path
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            if names:
                return names, path
    return None


def _read_yolo(src: Path, split: str, spec: ClassSpec | None, out: Path, report: ConvertReport) -> _Source:
    if not src.is_dir():
        raise DataError(f"{src}: --from yolo needs a folder with images/ and labels/ (or images and .txt files)")
    image_dir, label_dir = src / "images", src / "labels"
    if image_dir.is_dir() != label_dir.is_dir():
        have, lack = ("images", "labels") if image_dir.is_dir() else ("labels", "images")
        raise DataError(f"{src}: has {have}/ but no {lack}/; --from yolo expects both, or one flat folder")
    if not image_dir.is_dir():
        image_dir = label_dir = src
    elif (image_dir / split).is_dir() and (label_dir / split).is_dir():
        image_dir, label_dir = image_dir / split, label_dir / split
        report.notes.append(f"used {_rel(image_dir, src)}/ and {_rel(label_dir, src)}/ (the --split subfolders)")
    found = _yolo_names([src, src / "labels", label_dir])
    if found is not None:
        id_names, origin = found
        report.notes.append(f"YOLO class names from {_rel(origin, src)}: {', '.join(id_names)}")
        origin_text = str(origin)
    elif spec is not None:
        id_names, origin_text = list(spec.names), "--classes"
    else:
        raise ConfigError(f"{src}: YOLO labels hold class ids only and there is no data.yaml / classes.txt; "
                          "pass --classes NAMES (the names of ids 0, 1, ... in order)")
    labels = [p for p in _walk(label_dir, (".txt",), out) if p.name not in YOLO_NAME_FILES]
    index = _ImageIndex([image_dir], out)
    entries = []
    for path in labels:
        label = _rel(path, src)
        image = index.find(None, path.relative_to(label_dir).with_suffix("").as_posix())
        if image is None:
            boxes = sum(1 for line in path.read_text(errors="replace").splitlines()
                        if line.strip() and not line.lstrip().startswith("#"))
            report.label_files_without_image.add(label)
            report.drop(NO_IMAGE, label, boxes)
            continue
        entries.append(_Entry(image, label, _parse_yolo(path, label, id_names, origin_text), normalised=True))
    used = {e.image for e in entries}
    for path in index.files:
        if path not in used:
            report.images_without_labels.add(_rel(path, src))
            entries.append(_Entry(path, None, normalised=True))
    if found is not None:
        return _Source(entries, id_names, str(found[1]))
    return _Source(entries)


def _parse_yolo(path: Path, label: str, id_names: list[str], origin: str) -> list[_Object]:
    objects = []
    for n, line in enumerate(_read_lines(path), start=1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        count = len(tokens)
        if count != 5 and (count < 7 or count % 2 == 0):
            raise DataError(f"{path}:{n}: expected 'class cx cy w h' (5 values) or a polygon 'class x1 y1 ... xn yn', "
                            f"got {count} value(s): {line.strip()[:80]!r}")
        try:
            cls = _number(tokens[0], "class id")
            if cls != int(cls) or cls < 0:
                raise ValueError(f"class id {tokens[0]!r} is not a non-negative integer")
            values = [_number(t, "coordinate") for t in tokens[1:]]
        except ValueError as exc:
            raise DataError(f"{path}:{n}: {exc}; fix the line") from None
        if int(cls) >= len(id_names):
            raise DataError(f"{path}:{n}: class id {int(cls)} is out of range: {origin} names {len(id_names)} "
                            f"class(es), ids 0..{len(id_names) - 1}")
        if any(not -1.0 <= v <= 2.0 for v in values):
            raise DataError(f"{path}:{n}: {line.strip()[:80]!r} is not normalised: YOLO coordinates are fractions "
                            "of the image size (0..1), not pixels")
        if count == 5:
            cx, cy, w, h = values
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        else:
            box = _enclosing(values)
        objects.append(_Object(id_names[int(cls)], box, f"{label}:{n}"))
    return objects


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text file ({exc.reason} at byte {exc.start}); fix or remove it") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _enclosing(xy: list[float]) -> tuple[float, float, float, float]:
    xs, ys = xy[0::2], xy[1::2]
    return min(xs), min(ys), max(xs), max(ys)


def _read_dota(src: Path, split: str, out: Path, report: ConvertReport) -> _Source:
    label_dir = next((src / d for d in DOTA_LABEL_DIRS if (src / d).is_dir()), None)
    image_dir = src / "images"
    if not src.is_dir() or label_dir is None or not image_dir.is_dir():
        raise DataError(f"{src}: --from dota expects images/ and labelTxt/ (or annfiles/) folders")
    index = _ImageIndex([image_dir], out)
    entries = []
    for path in _walk(label_dir, (".txt",), out):
        label = _rel(path, src)
        image = index.find(None, path.relative_to(label_dir).with_suffix("").as_posix())
        lines = _read_lines(path)
        if image is None:
            boxes = sum(1 for line in lines if line.strip() and not line.strip().lower().startswith(DOTA_HEADERS))
            report.label_files_without_image.add(label)
            report.drop(NO_IMAGE, label, boxes)
            continue
        entries.append(_Entry(image, label, _parse_dota(path, label, lines)))
    used = {e.image for e in entries}
    for path in index.files:
        if path not in used:
            report.images_without_labels.add(_rel(path, src))
            entries.append(_Entry(path, None))
    return _Source(entries)


def _parse_dota(path: Path, label: str, lines: list[str]) -> list[_Object]:
    objects = []
    for n, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens or tokens[0].lower().startswith(DOTA_HEADERS):
            continue
        if len(tokens) not in (9, 10):
            raise DataError(f"{path}:{n}: expected 'x1 y1 x2 y2 x3 y3 x4 y4 class difficult', got {len(tokens)} "
                            f"value(s): {line.strip()[:80]!r}")
        try:
            xy = [_number(t, "coordinate") for t in tokens[:8]]
            difficult = _number(tokens[9], "difficult") >= 1 if len(tokens) == 10 else False
        except ValueError as exc:
            raise DataError(f"{path}:{n}: {exc}; fix the line") from None
        objects.append(_Object(tokens[8], _enclosing(xy), f"{label}:{n}", difficult=difficult))
    return objects


def _coco_json(src: Path, split: str) -> Path:
    if src.is_file():
        return src
    if (src / "Annotations" / f"{split}.json").is_file():
        return src / "Annotations" / f"{split}.json"
    found = sorted(src.glob("*.json"))
    if len(found) == 1:
        return found[0]
    names = ", ".join(p.name for p in found) or "none"
    raise DataError(f"{src}: --from coco needs the json: pass the file itself, or a folder with "
                    f"Annotations/{split}.json or a single *.json (found: {names})")


def _read_coco(src: Path, split: str, report: ConvertReport) -> _Source:
    ann_file = _coco_json(src, split)
    data = load_coco_json(ann_file)
    categories = data.get("categories")
    if not isinstance(categories, list) or not categories:
        raise DataError(f"{ann_file}: no 'categories' list; a detection json must name its classes")
    cat_names: dict[int, str] = {}
    for cat in categories:
        cid = cat.get("id") if isinstance(cat, dict) else None
        if not isinstance(cid, int) or cid in cat_names or not str(cat.get("name", "")).strip():
            raise DataError(f"{ann_file}: category {cat!r} needs a unique integer 'id' and a 'name'")
        cat_names[cid] = str(cat["name"]).strip()
    root, stem = split_root(ann_file)
    base = ann_file.parent
    by_id: dict[int, _Entry] = {}
    entries = []
    for img in data["images"]:
        name = img["file_name"]
        candidates = [*image_candidates(root, stem, name), base / name, base / "images" / name, root / "images" / name,
                      root / name]
        image = next((p for p in dict.fromkeys(candidates) if p.is_file()), None)
        try:
            declared = int(img["width"]), int(img["height"])
        except (KeyError, TypeError, ValueError):
            declared = None
        entry = _Entry(image, f"{ann_file.name} image {img['id']} ({name})", declared=declared)
        if not isinstance(img["id"], int) or img["id"] in by_id:
            raise DataError(f"{ann_file}: image id {img['id']!r} ({name}) is not an integer or appears twice")
        by_id[img["id"]] = entry
        entries.append(entry)
    for n, ann in enumerate(data["annotations"]):
        aid = ann.get("id", f"#{n}") if isinstance(ann, dict) else f"#{n}"
        entry = by_id.get(ann.get("image_id")) if isinstance(ann, dict) else None
        if entry is None:
            raise DataError(f"{ann_file}: annotation {aid}: image_id is not in 'images'; fix or remove it")
        cid = ann.get("category_id")
        if cid not in cat_names:
            raise DataError(f"{ann_file}: annotation {aid}: unknown category_id {cid!r} (known: {sorted(cat_names)})")
        bbox = ann.get("bbox")
        try:
            if isinstance(bbox, str) or len(bbox) != 4:
                raise ValueError
            x, y, w, h = (_number(v, "bbox value") for v in bbox)
        except (TypeError, ValueError):
            raise DataError(f"{ann_file}: annotation {aid}: bbox {bbox!r} is not 4 finite numbers [x, y, w, h]"
                            ) from None
        entry.objects.append(_Object(cat_names[cid], (x, y, x + w, y + h), f"{ann_file.name} annotation {aid}",
                                     iscrowd=int(bool(ann.get("iscrowd", 0))), ignore=int(bool(ann.get("ignore", 0)))))
    for entry in entries:
        if entry.image is None:
            report.missing_images.add(f"{entry.label}: not found near {ann_file}")
            report.drop(MISSING_IMAGE, entry.label or "", len(entry.objects))
    order = [cat_names[c] for c in sorted(cat_names)]
    return _Source([e for e in entries if e.image is not None], order, str(ann_file))


# --------------------------------------------------------------------------------------------------- writing


def _next_number(images_root: Path) -> int:
    """1 + the highest numeric file stem in ``JPEGImages/`` and its split folders (1 when there is none)."""
    highest = 0
    if images_root.is_dir():
        for folder in [images_root, *(d for d in images_root.iterdir() if d.is_dir() and not d.name.startswith("."))]:
            for path in folder.iterdir():
                if path.stem.isdigit() and path.suffix.lower() in IMAGE_EXTENSIONS:
                    highest = max(highest, int(path.stem))
    return highest + 1


def _place(src: Path, dst: Path, copy: bool) -> str:
    if copy:
        shutil.copy2(src, dst)
        return "copied"
    try:
        os.link(src.resolve(), dst)
        return "hardlinked"
    except OSError:
        os.symlink(src.resolve(), dst)
        return "symlinked"


def _save_report(out: Path, report: ConvertReport) -> None:
    path = out / REPORT_NAME
    reports: dict = {}
    if path.is_file():
        try:
            reports = json.loads(path.read_text())
        except (OSError, ValueError):
            reports = {}
        if not isinstance(reports, dict):
            reports = {}
    reports[report.split] = report.to_dict()
    write_json_atomic(path, reports)


def convert_dataset(
    src: str | Path,
    out: str | Path,
    fmt: str,
    classes: str | None = None,
    split: str = "train",
    copy: bool = False,
    difficult: str = "ignore",
    progress: bool | None = None,
) -> ConvertReport:
    """Convert ``src`` (``fmt`` in voc, yolo, dota, coco) into ``out`` in the SARDet-100K layout; see the module
    docstring for every rule. Raises ``DataError`` / ``ConfigError`` (one line, naming the file) for bad input;
    returns the :class:`ConvertReport`, also saved in ``out/convert_report.json``."""
    if fmt not in FORMATS:
        raise ConfigError(f"--from {fmt!r}: unknown format; use one of {', '.join(FORMATS)}")
    if difficult not in DIFFICULT_POLICIES:
        raise ConfigError(f"--difficult {difficult!r}: use one of {', '.join(DIFFICULT_POLICIES)}")
    if not split or split.startswith(".") or any(c in split for c in "/\\"):
        raise ConfigError(f"--split {split!r}: use a plain name such as train, val or test")
    src, out = Path(src), Path(out)
    if not src.exists():
        raise DataError(f"{src}: no such file or folder; pass the dataset to convert")
    if out.resolve() == (src if src.is_dir() else src.parent).resolve():
        raise DataError(f"{out}: the output folder cannot be the source folder; pick a new OUT")
    spec = parse_classes(classes)
    ann_path = out / "Annotations" / f"{split}.json"
    image_dir = out / "JPEGImages" / split
    if ann_path.exists():
        raise DataError(f"{ann_path} already exists; remove it and JPEGImages/{split}/, or pick another --split")
    if image_dir.is_dir() and any(image_dir.iterdir()):
        raise DataError(f"{image_dir} already holds files; remove it, or pick another --split")

    report = ConvertReport(fmt, src, out, split)
    if fmt == "voc":
        source = _read_voc(src, split, out, report)
    elif fmt == "yolo":
        source = _read_yolo(src, split, spec, out, report)
    elif fmt == "dota":
        source = _read_dota(src, split, out, report)
    else:
        source = _read_coco(src, split, report)
    if fmt != "coco":  # COCO keeps the json's order
        source.entries.sort(key=lambda e: str(e.image))

    if spec is None:
        if source.class_order is not None:
            spec = _spec_from_names(source.class_order, source.class_origin)
        else:
            first: dict[str, str] = {}
            for entry in source.entries:
                for obj in entry.objects:
                    first.setdefault(obj.name.lower(), obj.name)
            spec = _spec_from_names([first[k] for k in sorted(first)], str(src))
            if spec.names:
                report.notes.append("classes not given: the names found, sorted (" + ", ".join(spec.names)
                                    + "); pass --classes to fix the ids across splits")
    if not spec.names:
        raise DataError(f"{src}: no class names found (no labelled object); pass --classes NAMES")
    report.classes = list(spec.names)

    base = src if src.is_dir() else src.parent
    images, annotations, to_place = _build(source.entries, spec, difficult, _next_number(out / "JPEGImages"), report,
                                           base, progress)
    if not images:
        raise DataError(f"{src}: no image could be converted (see: {_first_problem(report)}); nothing was written")

    staging = out / "JPEGImages" / f".{split}.partial"
    if staging.exists():
        shutil.rmtree(staging)  # our own leftover from an interrupted run
    staging.mkdir(parents=True)
    try:
        for source_path, file_name in _progress(to_place, progress, "place images"):
            report.placed[_place(source_path, staging / file_name, copy)] += 1
        if image_dir.is_dir():
            image_dir.rmdir()  # empty (checked above)
        staging.rename(image_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if report.placed.get("symlinked"):
        report.notes.append("some images are symlinks to SRC (no hard link across file systems): keep SRC, "
                            "or convert again with --copy")
    data = {
        "info": {"description": f"converted by sarmae data convert --from {fmt} from {src}"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n} for i, n in enumerate(spec.names)],
    }
    try:
        write_json_atomic(ann_path, data)
    except BaseException:
        shutil.rmtree(image_dir, ignore_errors=True)
        raise
    if not (out / "Annotations" / "train.json").is_file():
        report.notes.append("OUT has no train split yet: sarmae data check and training expect Annotations/train.json")
    _save_report(out, report)
    return report


def _first_problem(report: ConvertReport) -> str:
    for title, t in (("unreadable images", report.unreadable_images), ("missing images", report.missing_images),
                     ("label files without image", report.label_files_without_image)):
        if t.count:
            return f"{title}: {t.examples[0]}"
    return "no image files found"


def _progress(items: list, progress: bool | None, desc: str):
    from tqdm import tqdm

    disable = len(items) < 200 if progress is None else not progress
    return tqdm(items, desc=desc, unit="img", disable=disable)


def _build(entries: list[_Entry], spec: ClassSpec, difficult: str, number: int, report: ConvertReport, src: Path,
           progress: bool | None) -> tuple[list[dict], list[dict], list[tuple[Path, str]]]:
    """Image and annotation entries (``src``: the folder paths are reported relative to) and the files to place."""
    images: list[dict] = []
    annotations: list[dict] = []
    to_place: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for entry in _progress(entries, progress, "read image sizes"):
        assert entry.image is not None
        where = entry.label or _rel(entry.image, src)
        if entry.image in seen:
            report.drop(DUPLICATE, where, len(entry.objects))
            continue
        try:
            width, height, _ = scene_size(entry.image)
        except DataError as exc:
            report.unreadable_images.add(str(exc))
            report.drop(UNREADABLE, where, len(entry.objects))
            continue
        seen.add(entry.image)
        if entry.declared is not None and entry.declared != (width, height):
            report.size_mismatches.add(f"{where}: label {entry.declared[0]}x{entry.declared[1]}, "
                                       f"file {_rel(entry.image, src)} {width}x{height}")
        file_name = f"{number:07d}{entry.image.suffix.lower()}"
        image_id = number
        number += 1
        written = 0
        for obj in entry.objects:
            cat = spec.lookup.get(obj.name.lower())
            if cat is None:
                report.drop(UNKNOWN_CLASS, obj.where)
                report.unknown_names[obj.name] += 1
                continue
            if obj.difficult and difficult == "drop":
                report.drop(DIFFICULT_DROPPED, obj.where)
                continue
            x1, y1, x2, y2 = obj.box
            if entry.normalised:
                x1, y1, x2, y2 = x1 * width, y1 * height, x2 * width, y2 * height
            if x2 <= x1 or y2 <= y1:
                report.drop(DEGENERATE, f"{obj.where}: corners {[x1, y1, x2, y2]}")
                continue
            verdict, corners = clip_box(x1, y1, x2 - x1, y2 - y1, width, height)  # the loader's rule
            if verdict == BOX_DROPPED or corners is None:
                report.drop(OUTSIDE, f"{obj.where}: corners {[x1, y1, x2, y2]} vs {width}x{height}")
                continue
            x, y = corners[0], corners[1]
            w, h = corners[2] - x, corners[3] - y
            if verdict == BOX_CLIPPED:
                report.clipped.add(f"{obj.where}: corners {[x1, y1, x2, y2]} vs {width}x{height}")
            ignore = obj.difficult and difficult == "ignore"
            iscrowd, ignored = (1, 1) if ignore else (obj.iscrowd, obj.ignore)
            report.ignore_marked += int(bool(iscrowd or ignored))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h],
                "area": w * h, "iscrowd": iscrowd, "ignore": ignored, "segmentation": [],
            })
            report.boxes_written[spec.names[cat]] += 1
            written += 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height,
                       "source_file": _rel(entry.image, src)})
        to_place.append((entry.image, file_name))
        report.images_written += 1
        report.empty_images += int(written == 0)
    return images, annotations, to_place
