"""ViTDet fine-tuning (paper II-B, III-C) as a Lightning module, plus the ``sarmae finetune`` entry point.

Recipe (paper / SARDet-100K toolkit): 800x800 resize + flip, AdamW lr 1e-4 betas (0.9, 0.999) wd 0.05,
500 linear warm-up iterations, x0.1 at epochs 8 and 11 of 12; optional ViTDet layer-wise lr decay.
Validation (COCO bbox on the val split) runs every epoch; ``weights/best.ckpt`` follows val mAP.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from sarmae.config import get_dotted
from sarmae.data.coco import CocoDetection
from sarmae.data.io import IntensityScaling
from sarmae.data.robust import SkipBadSamples, collate_detection
from sarmae.data.transforms import detection_transforms
from sarmae.engine.metrics import coco_metrics, detections_to_coco, format_table, gather_results
from sarmae.engine.runs import (
    CsvMetrics,
    build_trainer,
    capture_rng_state,
    prepare_run_dir,
    resolve_resume,
    restore_rng_state,
)
from sarmae.errors import ConfigError
from sarmae.models.checkpoints import load_encoder_weights
from sarmae.models.vitdet import build_detector, param_groups

TABLE_KEYS = ("mAP", "AP50", "AP75", "mAP_s", "mAP_m", "mAP_l")
LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
METRIC_COLUMNS = ["epoch", "step", "loss", *LOSS_KEYS, "lr", *(f"val_{k}" for k in TABLE_KEYS)]
INITS = ("scratch", "imagenet", "sar", "timm")


def step_schedule(step: int, warmup: int, milestones: list[int], gamma: float = 0.1) -> float:
    """lr multiplier: linear warm-up from 0.001 over ``warmup`` steps, x``gamma`` at each milestone step."""
    factor = gamma ** sum(step >= m for m in milestones)
    if step < warmup:
        factor *= 0.001 + (1 - 0.001) * step / warmup
    return factor


class ViTDetFinetuning(L.LightningModule):
    """Wraps the torchvision Faster R-CNN (at ``self.model``) with optimiser, schedule and COCO validation.

    ``classes`` = {"names": [...], "label_to_cat_id": {label: file category id}} travels in the checkpoint,
    so evaluation and prediction write the dataset's own category ids.
    """

    def __init__(self, cfg: dict, classes: dict, coco_gt: dict | None = None) -> None:
        super().__init__()
        self.save_hyperparameters({"cfg": cfg, "classes": classes})
        self.cfg = cfg
        self.classes = classes
        self.label_to_cat_id = {int(k): int(v) for k, v in classes["label_to_cat_id"].items()}
        self.model = build_detector(cfg.get("model") or {}, num_classes=len(classes["names"]) + 1)
        self.coco_gt = coco_gt
        self.max_dets = int(get_dotted(cfg, "eval.max_dets", 100))
        self.csv_rows: list[dict] = []
        self.metrics: dict = {}
        self._results: list[dict] = []
        self.last_results: list[dict] = []
        self._losses: dict[str, float] = {}
        self._n_loss = 0
        self._skipped = 0

    def initialise_backbone(self) -> None:
        """``init=scratch|imagenet|sar|timm`` with ``weights=PATH``: load ViT weights, print what happened."""
        init, weights = self.cfg.get("init", "scratch"), self.cfg.get("weights")
        if init not in INITS:
            raise ConfigError(f"init={init}: use one of {', '.join(INITS)}")
        if init == "scratch":
            if weights:
                raise ConfigError("init=scratch does not take weights=; use init=sar|imagenet|timm weights=PATH")
            return
        if not weights:
            raise ConfigError(f"init={init} needs weights=PATH (an MAE / timm checkpoint or encoder.safetensors)")
        report = load_encoder_weights(self.model.backbone.vit, Path(weights))
        print(f"init={init}: {report.summary()}")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets, n_skipped = batch
        self._skipped += int(n_skipped)
        losses = self.model(images, targets)
        loss = sum(losses.values())
        for key, value in losses.items():
            self._losses[key] = self._losses.get(key, 0.0) + float(value.detach())
        self._n_loss += 1
        self.log("loss", loss, prog_bar=True, batch_size=len(images))
        self.log("lr", self.optimizers().param_groups[0]["lr"], prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        skipped = int(self.trainer.strategy.reduce(torch.tensor(float(self._skipped)), reduce_op="sum"))
        if skipped and self.trainer.is_global_zero:
            print(f"epoch {self.current_epoch}: skipped {skipped} unreadable images (warnings above name them)")
        self._skipped = 0

    def validation_step(self, batch, batch_idx: int) -> None:
        images, targets, _ = batch
        outputs = self.model(images)
        image_ids = [int(t["image_id"]) for t in targets]
        self._results += detections_to_coco(image_ids, outputs, self.label_to_cat_id)

    def on_validation_epoch_end(self) -> None:
        results = gather_results(self._results)
        self._results, self.last_results = [], results
        names = dict(zip(self.label_to_cat_id.values(), self.classes["names"]))
        self.metrics = coco_metrics(self.coco_gt, results, max_dets=self.max_dets, class_names=names)
        for key in TABLE_KEYS:
            self.log(f"val/{key}", float(self.metrics[key]), prog_bar=key in ("mAP", "AP50"), sync_dist=False)
        if self.trainer.sanity_checking or self.trainer.state.fn != "fit":
            return
        n = max(1, self._n_loss)
        row = {key: f"{self._losses.get(key, 0.0) / n:.5f}" for key in LOSS_KEYS}
        row["loss"] = f"{sum(self._losses.values()) / n:.5f}"
        row.update({f"val_{k}": f"{self.metrics[k]:.5f}" for k in TABLE_KEYS})
        row.update(epoch=self.current_epoch, step=self.global_step,
                   lr=f"{self.optimizers().param_groups[0]['lr']:.6e}")
        self.csv_rows.append(row)
        self._losses, self._n_loss = {}, 0
        if self.trainer.is_global_zero:
            print(f"\nepoch {self.current_epoch}: " + format_table({"val": self.metrics}))

    def configure_optimizers(self):
        ocfg = self.cfg.get("optim") or {}
        lr = float(ocfg.get("lr", 1e-4))
        groups = param_groups(self.model, lr, float(ocfg.get("weight_decay", 0.05)), ocfg.get("layer_decay"))
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(ocfg.get("betas", (0.9, 0.999))))
        epochs = max(1, int(self.cfg["epochs"]))
        per_epoch = max(1, int(self.trainer.estimated_stepping_batches) // epochs)
        milestones = [int(m) * per_epoch for m in ocfg.get("milestones", [8, 11])]
        warmup = int(ocfg.get("warmup_iters", 500))

        def schedule(step: int) -> float:
            return step_schedule(step, warmup, milestones, float(ocfg.get("gamma", 0.1)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_state"] = capture_rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        restore_rng_state(checkpoint.get("rng_state"))


def detection_datasets(cfg: dict) -> tuple[CocoDetection, CocoDetection]:
    """(train, val) datasets of ``data.root``; training images without boxes follow ``data.keep_empty``."""
    data = cfg.get("data") or {}
    if not data.get("root"):
        raise ConfigError("no dataset: pass data.root=PATH (a COCO / SARDet-100K root with Annotations/)")
    scaling = IntensityScaling.from_config(data.get("scaling"))
    size = int(get_dotted(cfg, "model.img_size", 800))
    train = CocoDetection(
        data["root"], data.get("train_split", "train"), transforms=detection_transforms(True, size),
        scaling=scaling, keep_empty=bool(data.get("keep_empty", False)),
    )
    val = CocoDetection(
        data["root"], data.get("val_split", "val"), transforms=detection_transforms(False, size),
        scaling=scaling, keep_empty=True,
    )
    if train.class_names != val.class_names:
        raise ConfigError(f"{train.ann_file} and {val.ann_file} have different categories")
    return train, val


def class_info(dataset: CocoDetection) -> dict:
    return {"names": list(dataset.class_names), "label_to_cat_id": dict(dataset.label_to_cat_id)}


def detection_loader(dataset, cfg: dict, train: bool, batch_size: int | None = None) -> DataLoader:
    data = cfg.get("data") or {}
    return DataLoader(
        SkipBadSamples(dataset, strict=bool(data.get("strict", False))),
        batch_size=batch_size or int(cfg["batch_size"]),
        shuffle=train,
        num_workers=int(data.get("workers", 4)),
        collate_fn=collate_detection,
        pin_memory=torch.cuda.is_available(),
    )


def run_finetune(cfg: dict) -> Path:
    """``sarmae finetune``: train with validation every epoch; returns the run folder."""
    for key in ("epochs", "batch_size"):
        if key not in cfg:
            raise ConfigError(f"config has no '{key}': add it to the YAML or pass {key}=N")
    L.seed_everything(int(cfg.get("seed", 0)), workers=True, verbose=False)
    run_dir = prepare_run_dir(cfg, "finetune")
    resume = resolve_resume(cfg, run_dir)
    train, val = detection_datasets(cfg)
    module = ViTDetFinetuning(cfg, class_info(train), coco_gt=val.coco_gt)
    if resume is None:
        module.initialise_backbone()
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "weights", filename="best", monitor="val/mAP", mode="max",
        save_top_k=1, save_last=True, auto_insert_metric_name=False,
    )
    trainer = build_trainer(cfg, run_dir, [CsvMetrics(run_dir / "metrics.csv", METRIC_COLUMNS)],
                            checkpoint=checkpoint, val_every=int(get_dotted(cfg, "eval.every", 1)))
    if trainer.is_global_zero:
        print(f"fine-tuning on {len(train)} images, validating on {len(val)} -> {run_dir}"
              + (f" (resuming {resume})" if resume else ""))
    trainer.fit(module, detection_loader(train, cfg, True), detection_loader(val, cfg, False),
                ckpt_path=resume, weights_only=True)
    if trainer.is_global_zero and module.metrics:
        print(format_table({str(cfg.get("init", "scratch")): module.metrics}))
    return run_dir
