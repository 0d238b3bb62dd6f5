"""``sarmae export`` and the exported runtimes: the shared trained tiny ViTDet exported to ONNX and OpenVINO, fp32
and INT8, run through the normal predict / evaluate / API paths.

Parity: fp32 ONNX Runtime and OpenVINO give PyTorch's detections (boxes within 1e-3 relative, same labels and
scores) and its COCO mAP within 0.1 point; INT8 changes mAP by at most 1.0 point (printed).
"""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sarmae.api import Detector
from sarmae.cli import main
from sarmae.infer.evaluate import evaluate_checkpoint
from test_finetune import trained_run

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> dict[str, Path]:
    """fp32 ONNX / OpenVINO and INT8 ONNX exports of the trained detector, made through the CLI."""
    out = tmp_path_factory.mktemp("exported")
    ckpt = trained / "weights" / "best.ckpt"
    calib = str(trained.parent / "synth" / "JPEGImages" / "train")
    files = {"onnx": out / "model.onnx", "openvino": out / "model.xml", "int8": out / "model-int8.onnx"}
    assert main(["export", str(ckpt), "--out", str(files["onnx"])]) == 0
    assert main(["export", str(ckpt), "--format", "openvino", "--out", str(files["openvino"])]) == 0
    assert main(["export", str(ckpt), "--int8", "--calib", calib, "--calib-count", "16",
                 "--out", str(files["int8"])]) == 0
    return files


@pytest.fixture(scope="module")
def reference(trained, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("eval_pt")
    return evaluate_checkpoint(trained / "weights" / "best.ckpt", trained.parent / "synth", "val", out, device="cpu")


@pytest.mark.parametrize("kind", ["onnx", "openvino"])
def test_fp32_export_gives_the_pytorch_detections(trained, exported, kind):
    chips = sorted((trained.parent / "synth" / "JPEGImages" / "val").glob("*.png"))[:6]
    torch_results = Detector.load(trained, device="cpu").predict(chips, score_threshold=0.05)
    runtime = Detector.load(exported[kind])
    results = runtime.predict(chips, score_threshold=0.05)
    assert sum(len(r) for r in torch_results) > 0
    for ours, theirs in zip(results, torch_results):
        assert ours.labels == theirs.labels
        np.testing.assert_allclose(ours.boxes, theirs.boxes, rtol=1e-3, atol=1e-2)
        np.testing.assert_allclose(ours.scores, theirs.scores, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("kind", ["onnx", "openvino"])
def test_fp32_export_keeps_coco_map_within_a_tenth_of_a_point(trained, exported, reference, tmp_path, kind):
    metrics = evaluate_checkpoint(exported[kind], trained.parent / "synth", "val", tmp_path, device="cpu")
    assert abs(metrics["mAP"] - reference["mAP"]) * 100 <= 0.1
    assert abs(metrics["AP50"] - reference["AP50"]) * 100 <= 0.1


def test_int8_changes_coco_map_by_at_most_one_point(trained, exported, reference, tmp_path, capsys):
    metrics = evaluate_checkpoint(exported["int8"], trained.parent / "synth", "val", tmp_path, device="cpu")
    change = (metrics["mAP"] - reference["mAP"]) * 100
    with capsys.disabled():
        print(f"\nINT8 (ONNX Runtime, QDQ): mAP {metrics['mAP'] * 100:.2f} vs PyTorch fp32 "
              f"{reference['mAP'] * 100:.2f} ({change:+.2f} points)")
    assert abs(change) <= 1.0


def test_the_metadata_round_trips_and_describes_the_model(trained, exported):
    from sarmae.infer.runtime import read_metadata

    ckpt = torch.load(trained / "weights" / "best.ckpt", map_location="cpu", weights_only=True, mmap=True)
    classes = ckpt["hyper_parameters"]["classes"]
    for kind, path in exported.items():
        meta = read_metadata(path)
        assert meta["classes"]["names"] == classes["names"]
        assert {int(k): v for k, v in meta["classes"]["label_to_cat_id"].items()} == \
            {int(k): v for k, v in classes["label_to_cat_id"].items()}
        assert meta["img_size"] == ckpt["hyper_parameters"]["cfg"]["model"]["img_size"]
        assert meta["score_threshold"] == pytest.approx(0.001) and meta["max_detections"] == 100
        assert len(meta["mean"]) == len(meta["std"]) == 3
        if kind == "int8":
            assert meta["int8"]["quantised_layers"] > 0 and "NonMaxSuppression" in meta["int8"]["float"]
        else:
            assert meta["int8"] is None
    detector = Detector.load(exported["onnx"])
    assert detector.names == classes["names"] and "Detector(" in repr(detector)
    with pytest.raises(Exception, match="keeps at most 100 detections"):
        detector.set_max_dets(300)


def test_predict_runs_an_exported_model_from_the_cli(trained, exported, tmp_path):
    chips = sorted((trained.parent / "synth" / "JPEGImages" / "val").glob("*.png"))[:3]
    assert main(["predict", str(exported["openvino"]), *map(str, chips), "--out", str(tmp_path / "p"),
                 "--score-threshold", "0.1"]) == 0
    predictions = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert {p["image_id"] for p in predictions} <= {1, 2, 3} and all(p["score"] >= 0.1 for p in predictions)


def test_a_missing_deploy_extra_is_one_line(trained, exported, tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name.split(".")[0] == "onnxruntime":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    import sys
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    assert main(["predict", str(exported["onnx"]), str(trained.parent / "synth" / "JPEGImages" / "val"),
                 "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: onnxruntime is not installed: exported models need the deploy extra, " \
                  "pip install 'sarmae[deploy]'"
