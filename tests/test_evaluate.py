"""``sarmae evaluate``: Table 1 row, strict metrics.json, results.json with the dataset's ids, samples.png, errors.

Uses the tiny ViTDet trained once per session by test_finetune.py (synthetic benchmark, category ids renumbered
to ``CAT_IDS``), so the checks run on real, non-trivial detections.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from sarmae.cli import main
from sarmae.infer.evaluate import evaluate_checkpoint, json_safe
from sarmae.infer.metrics import TABLE_COLUMNS
from test_finetune import CAT_IDS, read_csv, trained_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory)


def strict_json(path: Path):
    """Parse like a strict JSON reader: NaN / Infinity are refused."""
    def refuse(constant):
        raise AssertionError(f"{path.name} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_evaluate_matches_training_validation_and_writes_the_files(trained, tmp_path, capsys):
    root = trained.parent / "synth"
    out = tmp_path / "eval"
    metrics = evaluate_checkpoint(trained / "weights" / "best.ckpt", root, "val", out, device="cpu")
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("| Pre-train data"))
    assert [c.strip() for c in header.strip("|").split("|")][1:] == list(TABLE_COLUMNS)
    assert any(line.startswith("| val ") for line in printed.splitlines())
    # Same weights, same code path: the numbers of the best epoch's validation.
    rows = read_csv(trained / "metrics.csv")
    best = max(rows, key=lambda r: float(r["val_mAP"]))
    for key in TABLE_COLUMNS:
        if best[f"val_{key}"] == "nan":
            assert math.isnan(metrics[key])
        else:
            assert metrics[key] == pytest.approx(float(best[f"val_{key}"]), abs=2e-5), key
    saved = strict_json(out / "metrics.json")
    assert set(TABLE_COLUMNS) | {"per_class"} <= set(saved)
    assert list(saved["per_class"]) == ["ship", "aircraft", "car", "tank", "bridge", "harbor"]
    assert saved["AP50"] == pytest.approx(metrics["AP50"])
    results = strict_json(out / "results.json")
    gt = json.loads((root / "Annotations" / "val.json").read_text())
    assert results and {r["category_id"] for r in results} <= set(CAT_IDS)
    assert {r["image_id"] for r in results} <= {img["id"] for img in gt["images"]}
    assert min(img["id"] for img in gt["images"]) > 1_000_000  # the file's ids, not positions
    assert all(len(r["bbox"]) == 4 and r["bbox"][2] >= 0 and 0 <= r["score"] <= 1 for r in results)
    with Image.open(out / "samples.png") as sheet:
        assert sheet.width > 2 * 256 and sheet.height >= 256


def test_max_dets_300_and_nan_written_as_null(trained, tmp_path):
    """A split with only small objects of a few classes: mAP_l and absent classes are undefined -> null."""
    root = trained.parent / "synth"
    gt = json.loads((root / "Annotations" / "val.json").read_text())
    small = {img["id"] for img in gt["images"]} - {a["image_id"] for a in gt["annotations"] if a["area"] >= 32 ** 2}
    keep = [img for img in gt["images"] if img["id"] in small][:3]
    ids = {img["id"] for img in keep}
    subset = {**gt, "images": keep, "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
    (root / "Annotations" / "tiny.json").write_text(json.dumps(subset))
    (root / "JPEGImages" / "tiny").mkdir(exist_ok=True)
    for img in keep:
        shutil.copy(root / "JPEGImages" / "val" / img["file_name"], root / "JPEGImages" / "tiny" / img["file_name"])
    out = tmp_path / "eval"
    code = main(["evaluate", str(trained / "weights" / "last.ckpt"), "--data", str(root), "--split", "tiny",
                 "--out", str(out), "--max-dets", "300", "--device", "cpu"])
    assert code == 0
    saved = strict_json(out / "metrics.json")
    assert saved["mAP_l"] is None and saved["max_dets"] == 300 and "AR300" in saved
    present = {a["category_id"] for a in subset["annotations"]}
    names = ["ship", "aircraft", "car", "tank", "bridge", "harbor"]
    for cat_id, name in zip(CAT_IDS, names):
        assert (saved["per_class"][name] is None) == (cat_id not in present), name
    results = strict_json(out / "results.json")
    per_image = [sum(r["image_id"] == i for r in results) for i in ids]
    assert max(per_image) <= 300 and {r["image_id"] for r in results} <= ids


def test_dataset_with_other_categories_exits_2(trained, tmp_path, capsys):
    root = trained.parent / "synth"
    other = tmp_path / "other"
    (other / "Annotations").mkdir(parents=True)
    gt = json.loads((root / "Annotations" / "val.json").read_text())
    gt["categories"] = [{**c, "id": i} for i, c in enumerate(gt["categories"])]  # ids 0..5 instead of CAT_IDS
    gt["annotations"] = []
    (other / "Annotations" / "val.json").write_text(json.dumps(gt))
    code = main(["evaluate", str(trained / "weights" / "best.ckpt"), "--data", str(other), "--out",
                 str(tmp_path / "e")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "differ from the checkpoint's" in err and "\n" not in err


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such checkpoint"),
    (lambda p: p.write_bytes(b"garbage"), "not a readable checkpoint"),
    (lambda p: torch.save({"state_dict": {}, "hyper_parameters": {"cfg": {"model": {"decoder_embed_dim": 8}}}}, p),
     "MAE pre-training checkpoint"),
])
def test_unusable_checkpoint_exits_2(make, message, tmp_path, capsys):
    path = tmp_path / "x.ckpt"
    make(path)
    assert main(["evaluate", str(path), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_json_safe_turns_non_finite_into_null():
    assert json_safe({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2}}) == \
        {"a": None, "b": [1.0, None], "c": {"d": 2}}
