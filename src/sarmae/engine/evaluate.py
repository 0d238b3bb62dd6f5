"""``sarmae evaluate``: COCO bbox metrics of a detector checkpoint on one split (paper Table 1 row).

Runs through Lightning's ``validate`` so the same code path serves training-time validation, and writes
``metrics.json`` (Table 1 keys + per_class), ``results.json`` (COCO results with the dataset's own image and
category ids) and ``samples.png`` (ground truth vs prediction, paper Figure 3 style).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L

from sarmae.data.coco import CocoDetection
from sarmae.data.io import IntensityScaling
from sarmae.engine.detector_io import load_detector, pick_device
from sarmae.engine.finetune import detection_loader
from sarmae.engine.metrics import format_table
from sarmae.errors import DataError


def evaluate_checkpoint(
    checkpoint: Path,
    data_root: Path,
    split: str = "val",
    out: Path | None = None,
    max_dets: int = 100,
    batch_size: int = 4,
    device: str = "auto",
) -> dict:
    """Evaluate, print the Table 1 row, write the files; returns the metrics dict."""
    module = load_detector(checkpoint)
    cfg = module.cfg
    dataset = CocoDetection(
        data_root, split, scaling=IntensityScaling.from_config((cfg.get("data") or {}).get("scaling")),
        keep_empty=True,
    )
    if dict(dataset.label_to_cat_id) != module.label_to_cat_id or list(dataset.class_names) != list(
        module.classes["names"]
    ):
        raise DataError(
            f"{dataset.ann_file}: categories {list(dataset.class_names)} differ from the checkpoint's "
            f"{module.classes['names']}; evaluate on the dataset the model was trained for"
        )
    module.coco_gt = dataset.coco_gt
    module.max_dets = max_dets
    module.model.roi_heads.detections_per_img = max(max_dets, module.model.roi_heads.detections_per_img)
    dev = pick_device(device)
    trainer = L.Trainer(
        accelerator="gpu" if dev.type == "cuda" else "cpu", devices=[dev.index or 0] if dev.type == "cuda" else 1,
        logger=False, enable_model_summary=False, enable_checkpointing=False,
        precision=str((cfg.get("trainer") or {}).get("precision", "32-true")),
    )
    trainer.validate(module, detection_loader(dataset, cfg, train=False, batch_size=batch_size), verbose=False)
    metrics = module.metrics
    print(format_table({split: metrics}))
    out = Path(out) if out else Path("runs") / "evaluate" / f"{Path(checkpoint).parent.parent.name}_{split}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "results.json").write_text(json.dumps(module.last_results))
    from sarmae.engine.predict import save_gt_vs_prediction

    save_gt_vs_prediction(dataset, module.last_results, out / "samples.png", module.classes)
    print(f"wrote {out / 'metrics.json'}, {out / 'results.json'}, {out / 'samples.png'}")
    return metrics
