"""Inference stands on its own: a fine-tuning checkpoint is rebuilt with models.vitdet and loaded strictly, without
any training (or Lightning) code; one palette and one COCO record rule for every output."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from sarmae.errors import CheckpointError
from sarmae.infer.detector_io import Detector, load_detector

TINY = {"size": "tiny", "img_size": 64, "pretrain_img_size": 64, "embed_dim": 32, "depth": 2, "num_heads": 2,
        "window_size": 2, "global_blocks": [1], "fpn_channels": 16, "rpn_pre_nms_top_n_test": 50,
        "rpn_post_nms_top_n_test": 20, "detections_per_img": 20, "score_thresh": 0.0}
CFG = {"model": TINY, "eval": {"max_dets": 30}, "data": {"scaling": {"mode": "percentile"}}}
CLASSES = {"names": ["ship", "tank"], "label_to_cat_id": {1: 4, 2: 9}}


def lightning_file(path, detector: Detector, **state_changes):
    """What ``sarmae finetune`` writes, as far as inference reads it: hyper_parameters and a ``model.`` state."""
    state = {f"model.{k}": v for k, v in detector.model.state_dict().items()}
    for key, value in state_changes.items():
        if value is None:
            state.pop(key)
        else:
            state[key] = value
    torch.save({"hyper_parameters": {"cfg": CFG, "classes": CLASSES}, "state_dict": state, "epoch": 0,
                "optimizer_states": []}, path)
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(3)
    detector = Detector.build(CFG, CLASSES).eval()
    return detector, lightning_file(tmp_path_factory.mktemp("ckpt") / "best.ckpt", detector)


def test_inference_imports_no_training_code():
    code = ("import sys, sarmae.infer.evaluate, sarmae.infer.predict, sarmae.infer.sliced, sarmae.infer.geo, "
            "sarmae.infer.reconstruct, sarmae.infer.metrics, sarmae.infer.detector_io; "
            "print(sorted(m for m in sys.modules if m.startswith(('sarmae.train', 'sarmae.experiments', "
            "'lightning'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_checkpoint_round_trip_is_strict_and_set_up_like_training(saved, one_cpu_thread):
    original, path = saved
    loaded = load_detector(path)
    assert not loaded.model.training and loaded.cfg == CFG and loaded.names == ["ship", "tank"]
    assert loaded.label_to_cat_id == {1: 4, 2: 9} and loaded.class_info() == CLASSES
    ours, theirs = loaded.model.state_dict(), original.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert loaded.model.roi_heads.detections_per_img == 30  # eval.max_dets over the configured 20
    image = torch.rand(3, 70, 50)
    with torch.no_grad():
        a, b = loaded.model([image])[0], original.model([image])[0]
        assert 20 < len(a["boxes"]) <= 30  # more than the configured 20: the raised cap is in effect
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
        with torch.autocast("cpu", dtype=torch.bfloat16):  # boxes stay float32 (models.vitdet.keep_boxes_float32)
            assert loaded.model([image])[0]["boxes"].dtype == torch.float32
    loaded.set_max_dets(10)
    assert loaded.model.roi_heads.detections_per_img == 20  # the configured value is the floor


@pytest.mark.parametrize("change, message", [
    ({"model.rpn.head.conv.0.0.bias": None}, "1 missing"),
    ({"model.extra.weight": torch.zeros(1)}, "1 unexpected"),
    ({"model.roi_heads.box_predictor.cls_score.bias": torch.zeros(7)}, "do not fit the detector"),
])
def test_damaged_weights_are_one_line_errors(saved, tmp_path, change, message):
    original, _ = saved
    path = lightning_file(tmp_path / "bad.ckpt", original, **change)
    with pytest.raises(CheckpointError, match=message) as info:
        load_detector(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_one_palette_is_matplotlibs_tab10():
    from matplotlib import colormaps

    from sarmae.infer.drawing import PALETTE, class_colour

    assert [class_colour(k) for k in range(1, 11)] == list(PALETTE)
    assert class_colour(11) == class_colour(1)
    for k, rgb in enumerate(PALETTE):
        assert rgb == tuple(int(round(255 * v)) for v in colormaps["tab10"](k)[:3])


def test_one_coco_record_rule(tmp_path):
    """metrics.detections_to_coco (evaluation), predict and geo.write_coco (scenes) write the same record."""
    from sarmae.infer.detections import Detections, coco_result
    from sarmae.infer.geo import write_coco
    from sarmae.infer.metrics import detections_to_coco

    box, score = [10.123456, 20.5, 30.987654, 41.0], 0.123456789
    record = coco_result(7, 4, box, score)
    assert record == {"image_id": 7, "category_id": 4, "bbox": [10.12, 20.5, 20.86, 20.5], "score": 0.12346}
    out = {"boxes": torch.tensor([box], dtype=torch.float64), "labels": torch.tensor([1]),
           "scores": torch.tensor([score], dtype=torch.float64)}
    assert detections_to_coco([7], [out], {1: 4}) == [record]
    dets = Detections(np.array([box]), np.array([score], np.float64), np.array([1]))
    (written,) = json.loads(write_coco(tmp_path / "d.json", dets, "s.tif", ["ship"], {1: 4}).read_text())
    assert written == {**record, "image_id": 0, "file_name": "s.tif", "category_name": "ship"}


def test_bf16_copy_follows_the_training_precision_and_leaves_the_model_alone(monkeypatch, one_cpu_thread):
    """On a CPU with bf16 instructions a bf16-trained detector runs as a bf16 copy (float32 boxes, the same
    detections up to bf16 rounding); a float32-trained one stays float32, so its outputs do not depend on the CPU."""
    from sarmae.infer import detector_io

    monkeypatch.setattr(detector_io, "native_bf16", lambda device: True)  # as on this project's CPU
    torch.manual_seed(3)
    fp32 = Detector.build(CFG, CLASSES).eval()
    assert fp32.inference_model("cpu") is fp32.model
    bf16 = Detector.build({**CFG, "trainer": {"precision": "bf16-mixed"}}, CLASSES).eval()
    bf16.model.load_state_dict(fp32.model.state_dict())
    copy = bf16.inference_model("cpu")
    assert copy is not bf16.model and copy is bf16.inference_model("cpu")  # made once per device
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())  # the loaded model is untouched
    assert next(copy.backbone.parameters()).dtype == torch.bfloat16
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, out = fp32.model([image])[0], copy([image])[0]
        feats_ref = fp32.model.backbone(image[None])
        feats_out = copy.backbone(image[None])
    assert out["boxes"].dtype == torch.float32 and out["scores"].dtype == torch.float32
    for key in feats_ref:
        rel = (feats_out[key].float() - feats_ref[key]).norm() / feats_ref[key].norm()
        assert rel < 0.05, (key, float(rel))  # bf16 rounding, not another computation
    top = min(5, len(ref["scores"]), len(out["scores"]))
    assert top > 0 and torch.allclose(out["scores"][:top], ref["scores"][:top], atol=0.05)
