"""``sarmae data convert``: VOC / YOLO / DOTA / COCO fixtures -> SARDet-100K layout, report, links, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from sarmae.cli import main
from sarmae.data import convert as convert_module
from sarmae.data.check import check_dataset
from sarmae.data.coco import SARDET_CLASSES
from sarmae.data.convert import convert_dataset, parse_classes
from sarmae.errors import ConfigError, DataError


def _png(path: Path, width: int, height: int) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width), 40, dtype=np.uint8)).save(path)
    return path


def _voc_xml(path: Path, filename: str, size: tuple[int, int] | None, objects: list[tuple]) -> Path:
    """objects: (name, xmin, ymin, xmax, ymax, difficult)."""
    parts = [f"<annotation><folder>x</folder><filename>{filename}</filename>"]
    if size:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>1</depth></size>")
    for name, x1, y1, x2, y2, difficult in objects:
        parts.append(f"<object><name>{name}</name><pose>Unspecified</pose><difficult>{difficult}</difficult>"
                     f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    parts.append("</annotation>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path


@pytest.fixture
def voc(tmp_path) -> Path:
    """a.png 64x48 with six objects (kept, clipped, unknown, difficult, outside, degenerate); b.xml names b.jpg but
    the file is b.png and says 100x100 (file: 32x32); c.png has no xml; d.xml names an image that does not exist."""
    src = tmp_path / "voc"
    _png(src / "JPEGImages/a.png", 64, 48)
    _png(src / "JPEGImages/b.png", 32, 32)
    _png(src / "JPEGImages/c.png", 20, 20)
    _voc_xml(src / "Annotations/a.xml", "a.png", (64, 48), [
        ("Ship", 4, 6, 24, 16, 0),
        ("aircraft", 50, 30, 80, 60, 0),  # clipped to 64x48
        ("vessel", 1, 1, 5, 5, 0),  # not a SARDet name: dropped unless aliased
        ("ship", 10, 10, 20, 20, 1),  # difficult
        ("car", 70, 10, 75, 15, 0),  # right of the image
        ("tank", 5, 5, 5, 9, 0),  # zero width
    ])
    _voc_xml(src / "Annotations/b.xml", "b.jpg", (100, 100), [("ship", 0, 0, 10, 12, 0)])
    _voc_xml(src / "Annotations/d.xml", "d.png", (10, 10), [("ship", 1, 1, 4, 4, 0)])
    return src


def _load(out: Path, split: str = "train") -> dict:
    return json.loads((out / "Annotations" / f"{split}.json").read_text())


def _boxes(data: dict) -> list[tuple]:
    names = {c["id"]: c["name"] for c in data["categories"]}
    return [(a["image_id"], names[a["category_id"]], a["bbox"], a["iscrowd"], a["ignore"]) for a in data["annotations"]]


def test_voc_boxes_classes_difficult_and_report(voc, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["data", "convert", str(voc), str(out), "--from", "voc", "--classes", "sardet"]) == 0
    printed = capsys.readouterr().out
    data = _load(out)
    assert [c["name"] for c in data["categories"]] == list(SARDET_CLASSES)
    assert [c["id"] for c in data["categories"]] == list(range(6))
    assert [(i["id"], i["file_name"], i["width"], i["height"], i["source_file"]) for i in data["images"]] == [
        (1, "0000001.png", 64, 48, "JPEGImages/a.png"),
        (2, "0000002.png", 32, 32, "JPEGImages/b.png"),
        (3, "0000003.png", 20, 20, "JPEGImages/c.png"),
    ]
    assert _boxes(data) == [
        (1, "ship", [4.0, 6.0, 20.0, 10.0], 0, 0),
        (1, "aircraft", [50.0, 30.0, 14.0, 18.0], 0, 0),
        (1, "ship", [10.0, 10.0, 10.0, 10.0], 1, 1),  # difficult: ignored in training and in COCO scoring
        (2, "ship", [0.0, 0.0, 10.0, 12.0], 0, 0),
    ]
    ann = data["annotations"][1]
    assert ann["area"] == 14.0 * 18.0 and ann["category_id"] == 1 and ann["segmentation"] == []
    assert [a["id"] for a in data["annotations"]] == [1, 2, 3, 4]

    report = json.loads((out / "convert_report.json").read_text())["train"]
    assert report["images_written"] == 3 and report["empty_images"] == 1
    assert report["boxes_written"] == {"ship": 3, "aircraft": 1, "car": 0, "tank": 0, "bridge": 0, "harbor": 0}
    assert report["boxes_marked_ignore"] == 1 and report["boxes_clipped"]["count"] == 1
    dropped = {reason: v["count"] for reason, v in report["boxes_dropped"].items()}
    assert dropped == {
        convert_module.UNKNOWN_CLASS: 1, convert_module.OUTSIDE: 1, convert_module.DEGENERATE: 1,
        convert_module.MISSING_IMAGE: 1,
    }
    assert report["boxes_dropped_total"] == 4 and report["unknown_class_names"] == {"vessel": 1}
    assert report["missing_images"]["count"] == 1 and "d.xml" in report["missing_images"]["examples"][0]
    assert report["images_without_labels"] == {"count": 1, "examples": ["JPEGImages/c.png"]}
    assert report["size_mismatches"]["count"] == 1 and "100x100" in report["size_mismatches"]["examples"][0]
    assert "boxes dropped: 4" in printed and "'vessel' 1" in printed and "sarmae data check" in printed

    assert check_dataset(out).ok
    assert main(["data", "check", str(out)]) == 0


def test_voc_default_classes_sorted_and_aliases(voc, tmp_path):
    convert_dataset(voc, tmp_path / "sorted", "voc")
    data = _load(tmp_path / "sorted")
    # found names sorted case-insensitively, first spelling kept, ids 0..
    assert [(c["id"], c["name"]) for c in data["categories"]] == [
        (0, "aircraft"), (1, "car"), (2, "Ship"), (3, "tank"), (4, "vessel")]
    assert sum(a["category_id"] == 2 for a in data["annotations"]) == 3

    report = convert_dataset(voc, tmp_path / "alias", "voc", classes="SHIP=vessel+boat,aircraft", difficult="keep")
    data = _load(tmp_path / "alias")
    assert [c["name"] for c in data["categories"]] == ["SHIP", "aircraft"]
    assert (1, "SHIP", [1.0, 1.0, 4.0, 4.0], 0, 0) in _boxes(data)  # vessel kept as ship through the alias
    assert (1, "SHIP", [10.0, 10.0, 10.0, 10.0], 0, 0) in _boxes(data)  # difficult kept as an ordinary box
    assert report.unknown_names == {"car": 1, "tank": 1} and report.ignore_marked == 0


def test_voc_imagesets_split_list(voc, tmp_path):
    (voc / "ImageSets/Main").mkdir(parents=True)
    (voc / "ImageSets/Main/val.txt").write_text("b\nc\n")
    report = convert_dataset(voc, tmp_path / "out", "voc", classes="sardet", split="val")
    data = _load(tmp_path / "out", "val")
    assert [i["source_file"] for i in data["images"]] == ["JPEGImages/b.png", "JPEGImages/c.png"]
    assert (tmp_path / "out/JPEGImages/val/0000001.png").is_file()
    assert any("no train split" in n for n in report.notes)


@pytest.fixture
def yolo(tmp_path) -> Path:
    src = tmp_path / "yolo"
    _png(src / "images/p.png", 64, 32)
    _png(src / "images/q.png", 40, 40)
    _png(src / "images/r.png", 16, 16)  # no label file
    (src / "labels").mkdir()
    (src / "labels/p.txt").write_text(
        "0 0.5 0.5 0.25 0.5\n"  # -> x 24..40, y 8..24
        "1 0.9375 0.5 0.25 0.25\n"  # -> x 52..68: clipped to 64
        "\n"
        "0 0.25 0.25 0.5 0.25 0.5 0.75 0.25 0.75\n"  # polygon -> enclosing box x 16..32, y 8..24
    )
    (src / "labels/q.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    (src / "labels/s.txt").write_text("0 0.5 0.5 0.1 0.1\n0 0.2 0.2 0.1 0.1\n")  # no image s.*
    (src / "classes.txt").write_text("ship\naircraft\n")
    return src


def test_yolo_normalised_to_pixels_and_mapping_by_name(yolo, tmp_path):
    out = tmp_path / "out"
    report = convert_dataset(yolo, out, "yolo", classes="aircraft,ship")
    data = _load(out)
    # ids follow --classes; the YOLO ids are mapped through classes.txt by name (0 = ship -> 1, 1 = aircraft -> 0)
    assert [(c["id"], c["name"]) for c in data["categories"]] == [(0, "aircraft"), (1, "ship")]
    assert [(i["file_name"], i["width"], i["height"]) for i in data["images"]] == [
        ("0000001.png", 64, 32), ("0000002.png", 40, 40), ("0000003.png", 16, 16)]
    assert _boxes(data) == [
        (1, "ship", [24.0, 8.0, 16.0, 16.0], 0, 0),
        (1, "aircraft", [52.0, 12.0, 12.0, 8.0], 0, 0),
        (1, "ship", [16.0, 8.0, 16.0, 16.0], 0, 0),
        (2, "aircraft", [10.0, 10.0, 20.0, 20.0], 0, 0),
    ]
    assert report.clipped.count == 1 and report.empty_images == 1
    assert report.label_files_without_image.examples == ["labels/s.txt"]
    assert {r: t.count for r, t in report.dropped.items()} == {convert_module.NO_IMAGE: 2}
    assert report.images_without_labels.examples == ["images/r.png"]
    assert check_dataset(out).ok

    convert_dataset(yolo, tmp_path / "own", "yolo")  # no --classes: classes.txt order
    assert [c["name"] for c in _load(tmp_path / "own")["categories"]] == ["ship", "aircraft"]


def test_yolo_flat_folder_split_subfolders_and_data_yaml(tmp_path):
    flat = tmp_path / "flat"
    _png(flat / "x.png", 20, 10)
    (flat / "x.txt").write_text("0 0.5 0.5 0.5 0.4\n")
    convert_dataset(flat, tmp_path / "out_flat", "yolo", classes="ship")
    assert _boxes(_load(tmp_path / "out_flat")) == [(1, "ship", [5.0, 3.0, 10.0, 4.0], 0, 0)]

    tree = tmp_path / "tree"
    _png(tree / "images/val/v.png", 10, 10)
    _png(tree / "images/train/t.png", 10, 10)
    (tree / "labels/val").mkdir(parents=True)
    (tree / "labels/val/v.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    (tree / "data.yaml").write_text("path: .\nnames:\n  0: tank\n  1: car\n")
    convert_dataset(tree, tmp_path / "out_tree", "yolo", split="val")
    data = _load(tmp_path / "out_tree", "val")
    assert [i["source_file"] for i in data["images"]] == ["images/val/v.png"]  # only the val subfolder
    assert _boxes(data) == [(1, "car", [4.0, 4.0, 2.0, 2.0], 0, 0)]


@pytest.fixture
def dota(tmp_path) -> Path:
    src = tmp_path / "dota"
    _png(src / "images/P1.png", 50, 50)
    (src / "labelTxt").mkdir()
    (src / "labelTxt/P1.txt").write_text(
        "imagesource:GoogleEarth\ngsd:0.5\n"
        "10 10 30 12 28 25 8 22 ship 0\n"  # rotated quadrilateral -> x 8..30, y 10..25
        "40 40 60 40 60 60 40 60 harbor 1\n"  # difficult, clipped to 50
        "1 1 2 1 2 2 1 2 large-vehicle 0\n"
    )
    return src


def test_dota_polygon_to_enclosing_box_and_difficult(dota, tmp_path):
    report = convert_dataset(dota, tmp_path / "out", "dota", classes="sardet")
    data = _load(tmp_path / "out")
    assert _boxes(data) == [
        (1, "ship", [8.0, 10.0, 22.0, 15.0], 0, 0),
        (1, "harbor", [40.0, 40.0, 10.0, 10.0], 1, 1),
    ]
    assert report.unknown_names == {"large-vehicle": 1} and report.clipped.count == 1
    assert check_dataset(tmp_path / "out").ok

    report = convert_dataset(dota, tmp_path / "drop", "dota", classes="sardet", difficult="drop")
    assert [b[1] for b in _boxes(_load(tmp_path / "drop"))] == ["ship"]
    assert report.dropped[convert_module.DIFFICULT_DROPPED].count == 1


def test_coco_remaps_categories_by_name(tiny_coco, tmp_path):
    # tiny_coco: SARDet ids; image 7: ship, tank (clipped), aircraft (outside), car (crowd), bridge (ignore=1)
    out = tmp_path / "out"
    report = convert_dataset(tiny_coco.ann_file, out, "coco", classes="tank,ship,harbor")
    data = _load(out)
    assert [(c["id"], c["name"]) for c in data["categories"]] == [(0, "tank"), (1, "ship"), (2, "harbor")]
    assert [(i["id"], i["file_name"]) for i in data["images"]] == [
        (1, "0000001.jpg"), (2, "0000002.png"), (3, "0000003.bmp")]
    assert _boxes(data) == [
        (1, "ship", [4.0, 6.0, 20.0, 10.0], 0, 0),
        (1, "tank", [50.0, 30.0, 14.0, 18.0], 0, 0),
        (2, "harbor", [0.0, 0.0, 10.0, 12.0], 0, 0),
    ]
    assert report.unknown_names == {"aircraft": 1, "car": 1, "bridge": 1}
    assert check_dataset(out).ok

    # no --classes: the source categories in id order; crowd / ignore flags are copied
    convert_dataset(tiny_coco.root, tmp_path / "same", "coco")
    data = _load(tmp_path / "same")
    assert [c["name"] for c in data["categories"]] == list(SARDET_CLASSES)
    flags = {b[1]: (b[3], b[4]) for b in _boxes(data)}
    assert flags["car"] == (1, 0) and flags["bridge"] == (0, 1) and flags["ship"] == (0, 0)


def test_links_copy_and_symlink_fallback(voc, tmp_path, monkeypatch):
    src_file = voc / "JPEGImages/a.png"
    report = convert_dataset(voc, tmp_path / "linked", "voc", classes="sardet")
    linked = tmp_path / "linked/JPEGImages/train/0000001.png"
    assert report.placed == {"hardlinked": 3} and os.path.samefile(linked, src_file)

    report = convert_dataset(voc, tmp_path / "copied", "voc", classes="sardet", copy=True)
    copied = tmp_path / "copied/JPEGImages/train/0000001.png"
    assert report.placed == {"copied": 3} and not os.path.samefile(copied, src_file)
    assert copied.read_bytes() == src_file.read_bytes() and not copied.is_symlink()

    def no_hardlinks(*args, **kwargs):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(convert_module.os, "link", no_hardlinks)
    report = convert_dataset(voc, tmp_path / "symlinked", "voc", classes="sardet")
    symlinked = tmp_path / "symlinked/JPEGImages/train/0000001.png"
    assert report.placed == {"symlinked": 3} and symlinked.is_symlink() and os.path.samefile(symlinked, src_file)
    assert any("--copy" in n for n in report.notes)


def test_splits_share_out_numbers_continue_and_existing_split_is_refused(voc, dota, tmp_path):
    out = tmp_path / "out"
    convert_dataset(voc, out, "voc", classes="sardet", split="train")
    convert_dataset(dota, out, "dota", classes="sardet", split="val")
    assert [i["file_name"] for i in _load(out, "val")["images"]] == ["0000004.png"]  # after train's 1..3
    assert set(json.loads((out / "convert_report.json").read_text())) == {"train", "val"}
    report = check_dataset(out)
    assert report.ok and list(report.splits) == ["train", "val"]
    with pytest.raises(DataError, match="already exists"):
        convert_dataset(dota, out, "dota", classes="sardet", split="val")


def test_failure_while_placing_images_leaves_nothing(voc, tmp_path, monkeypatch):
    calls = []

    def fail_second(src, dst, copy):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        dst.write_bytes(src.read_bytes())
        return "copied"

    monkeypatch.setattr(convert_module, "_place", fail_second)
    out = tmp_path / "out"
    with pytest.raises(OSError):
        convert_dataset(voc, out, "voc", classes="sardet")
    assert not (out / "Annotations/train.json").exists()
    assert list((out / "JPEGImages").iterdir()) == []  # staging folder removed, no train/


def test_parse_classes():
    assert parse_classes("sardet").names == SARDET_CLASSES
    spec = parse_classes(" ship = vessel + boat , aircraft ")
    assert spec.names == ("ship", "aircraft") and spec.lookup == {"ship": 0, "vessel": 0, "boat": 0, "aircraft": 1}
    with pytest.raises(ConfigError, match="named twice"):
        parse_classes("ship,Ship")


def _cli_error(capsys, *argv: str) -> str:
    assert main(["data", "convert", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_one_line_errors(voc, yolo, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert "nope" in _cli_error(capsys, str(tmp_path / "nope"), out, "--from", "voc")
    assert "unknown format" in _cli_error(capsys, str(voc), out, "--from", "xml")

    (voc / "Annotations/a.xml").write_text("<annotation>\n<filename>a.png</filename>\n<object>\n</annotation>\n")
    err = _cli_error(capsys, str(voc), out, "--from", "voc")
    assert "a.xml: line 4" in err and "malformed XML" in err

    (voc / "Annotations/a.xml").write_text("<annotation><object><name>ship</name><bndbox><xmin>1</xmin>"
                                           "<ymin>x</ymin><xmax>3</xmax><ymax>4</ymax></bndbox></object></annotation>")
    assert "a.xml: <object> 1 (ship): <ymin> 'x' is not a number" in _cli_error(capsys, str(voc), out, "--from", "voc")

    (yolo / "labels/q.txt").write_text("1 0.5 0.5 0.5 0.5\n0 0.5 0.5 0.5\n")
    err = _cli_error(capsys, str(yolo), out, "--from", "yolo")
    assert "q.txt:2" in err and "got 4 value(s)" in err

    (yolo / "labels/q.txt").write_text("2 0.5 0.5 0.5 0.5\n")
    err = _cli_error(capsys, str(yolo), out, "--from", "yolo")
    assert "q.txt:1: class id 2 is out of range" in err and "classes.txt" in err

    (yolo / "labels/q.txt").write_text("0 20 12 5 5\n")
    assert "not normalised" in _cli_error(capsys, str(yolo), out, "--from", "yolo")

    (yolo / "classes.txt").unlink()
    assert "--classes" in _cli_error(capsys, str(yolo), out, "--from", "yolo")
    assert not Path(out).exists()  # nothing written by any failed conversion
