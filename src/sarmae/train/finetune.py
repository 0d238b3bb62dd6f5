"""ViTDet fine-tuning (paper II-B, III-C) as a Lightning module, plus the ``sarmae finetune`` entry point.

Recipe (paper / SARDet-100K toolkit): 800x800 resize + flip, AdamW lr 1e-4 betas (0.9, 0.999) wd 0.05,
500 linear warm-up iterations, x0.1 at epochs 8 and 11 of 12; optional ViTDet layer-wise lr decay.
Validation (COCO bbox on the val split) runs every ``eval.every`` epochs; ``weights/best.ckpt`` follows val mAP,
``weights/last.ckpt`` is written after every epoch and ``resume=auto`` continues from it exactly (model, optimiser,
schedule, loop counters, best score and every RNG).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from sarmae.config import complete_config
from sarmae.data.coco import CocoDetection
from sarmae.data.io import IntensityScaling
from sarmae.data.loaders import class_info, detection_loader
from sarmae.data.robust import SkipBadSamples, collate_detection
from sarmae.data.sampling import resumable_loader
from sarmae.data.transforms import detection_transforms
from sarmae.errors import CheckpointError, ConfigError, DataError, SarmaeError, Stopped
from sarmae.infer.metrics import TABLE_COLUMNS, coco_metrics, detections_to_coco, format_table, gather_results
from sarmae.models.vitdet import (
    DETECTOR_KEYS,
    build_detector,
    keep_boxes_float32,
    load_vit_encoder,
    param_groups,
    set_max_dets,
)
from sarmae.train.preemption import StopTraining, stop_point
from sarmae.train.runs import (
    CsvMetrics,
    SavesRngState,
    adamw,
    build_trainer,
    decide_precision,
    one_line_error,
    prepare_run_dir,
    read_checkpoint_header,
    resolve_resume,
    resume_position,
)

SCHEMA_CONFIG = "vitdet_b_sardet100k"  # the paper's config lists every fine-tuning key with its default
TABLE_KEYS = TABLE_COLUMNS  # mAP, AP50, AP75, mAP_s, mAP_m, mAP_l
LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
METRIC_COLUMNS = ["epoch", "step", "loss", *LOSS_KEYS, "lr", "images_per_s", *(f"val_{k}" for k in TABLE_KEYS)]
INITS = ("scratch", "imagenet", "sar", "timm")


def finetune_config(cfg: dict) -> dict:
    """The checked, complete fine-tuning config (:func:`~sarmae.config.complete_config`), with the checks that
    fail in the first second rather than after the datasets are parsed: run length, eval, init/weights."""
    cfg = complete_config(cfg, SCHEMA_CONFIG, DETECTOR_KEYS, open_sections=("data.scaling",))
    decide_precision(cfg)
    for key, value in (("epochs", cfg["epochs"]), ("batch_size", cfg["batch_size"]),
                       ("eval.max_dets", cfg["eval"]["max_dets"]), ("eval.every", cfg["eval"]["every"])):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}={value!r}: must be a whole number >= 1")
    init = cfg["init"] = cfg["init"] or "scratch"
    weights = cfg["weights"]
    if init not in INITS:
        raise ConfigError(f"init={init}: use one of {', '.join(INITS)}")
    if init == "scratch" and weights:
        raise ConfigError("init=scratch does not take weights=; use init=sar|imagenet|timm weights=PATH")
    if init != "scratch":
        if not weights:
            raise ConfigError(f"init={init} needs weights=PATH (an MAE / timm checkpoint or encoder.safetensors)")
        if not Path(str(weights)).is_file() and not cfg["resume"]:
            raise ConfigError(f"weights={weights}: no such file; pass the checkpoint to initialise the ViT from")
    return cfg


def step_schedule(step: int, warmup: int, milestones: list[int], gamma: float = 0.1) -> float:
    """lr multiplier: linear warm-up from 0.001 over ``warmup`` steps, x``gamma`` at each milestone step."""
    factor = gamma ** sum(step >= m for m in milestones)
    if step < warmup:
        factor *= 0.001 + (1 - 0.001) * step / warmup
    return factor


class ViTDetFinetuning(SavesRngState, L.LightningModule):
    """Wraps the torchvision Faster R-CNN (at ``self.model``) with optimiser, schedule and COCO validation.

    ``classes`` = {"names": [...], "label_to_cat_id": {label: file category id}} travels in the checkpoint,
    so evaluation and prediction write the dataset's own category ids. One ``metrics.csv`` row per validation:
    mean losses since the previous row, the lr, training images/s and the val Table 1 metrics.
    """

    def __init__(self, cfg: dict, classes: dict, coco_gt: dict | None = None) -> None:
        super().__init__()
        cfg = finetune_config(cfg)
        self.save_hyperparameters({"cfg": cfg, "classes": classes})
        self.cfg = cfg
        self.classes = classes
        self.label_to_cat_id = {int(k): int(v) for k, v in classes["label_to_cat_id"].items()}
        self.model = build_detector(cfg["model"], num_classes=len(classes["names"]) + 1)
        keep_boxes_float32(self.model)
        self._configured_dets = int(self.model.roi_heads.detections_per_img)
        self.set_max_dets(cfg["eval"]["max_dets"])
        self.coco_gt = coco_gt
        self.csv_rows: list[dict] = []
        self.metrics: dict = {}
        self._results: list[dict] = []
        self.last_results: list[dict] = []
        self._losses: dict[str, float] = {}
        self._n_loss = 0
        self._skipped = 0
        self._seen = 0
        self._train_s = 0.0
        self._tic = time.perf_counter()

    def set_max_dets(self, max_dets: int) -> None:
        """COCO scores up to ``max_dets`` detections per image, so the detector must keep at least that many."""
        self.max_dets = int(max_dets)
        set_max_dets(self.model, self.max_dets, self._configured_dets)

    def initialise_backbone(self) -> None:
        """``init=scratch|imagenet|sar|timm`` with ``weights=PATH``: load the ViT encoder, print what happened.

        Every ViT tensor except ViTDet's new rel-pos tables must come from the checkpoint; a partial load
        (another architecture, a classifier-only file) is an error rather than a silently weaker baseline.
        """
        init, weights = self.cfg["init"], self.cfg["weights"]
        if init == "scratch":
            return
        report = load_vit_encoder(self.model, Path(str(weights)), name=f"weights={weights}")
        if rank_zero_only.rank == 0:
            print(f"init={init} from {weights}: {report.summary()}")

    # -- training -----------------------------------------------------------------------------------

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        images, targets, n_skipped = batch
        self._skipped += int(n_skipped)
        if not images:  # every image of this batch was unreadable
            if self.trainer.world_size == 1:
                return None  # Lightning skips the batch
            # DDP needs a backward on every rank: a zero loss that touches every trainable parameter.
            return sum((p * 0).sum() for p in self.model.parameters() if p.requires_grad)
        targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        losses = self.model(images, targets)
        loss = sum(losses.values())
        for key, value in losses.items():
            self._losses[key] = self._losses.get(key, 0.0) + float(value.detach())
        self._n_loss += 1
        self._seen += len(images)
        self.log("loss", loss, prog_bar=True, batch_size=len(images))
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, batch_size=len(images))
        self.log("lr", self.optimizers().param_groups[0]["lr"], prog_bar=True)
        return loss

    def on_train_start(self) -> None:
        self._tic = time.perf_counter()  # (a run resumed mid-epoch skips on_train_epoch_start)

    def on_train_epoch_start(self) -> None:
        self._tic = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # Loading + step time, without validation (which runs after the last batch).
        now = time.perf_counter()
        self._train_s += now - self._tic
        self._tic = now
        stop_point(self.trainer, batch_idx)

    def running_state(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in ("_losses", "_n_loss", "_skipped", "_seen", "_train_s")}

    def on_train_epoch_end(self) -> None:
        skipped = int(self.trainer.strategy.reduce(torch.tensor(float(self._skipped)), reduce_op="sum"))
        if skipped and self.trainer.is_global_zero:
            print(f"epoch {self.current_epoch}: skipped {skipped} unreadable images (warnings above name them)")
        self._skipped = 0

    # -- validation ---------------------------------------------------------------------------------

    def validation_step(self, batch, batch_idx: int) -> None:
        images, targets, _ = batch
        if not images:
            return
        outputs = self.model(images)
        image_ids = [int(t["image_id"]) for t in targets]
        self._results += detections_to_coco(image_ids, outputs, self.label_to_cat_id)

    def on_validation_epoch_end(self) -> None:
        results = gather_results(self._results)  # all ranks, padded duplicates dropped
        self._results, self.last_results = [], results
        names = dict(zip(self.label_to_cat_id.values(), self.classes["names"]))
        self.metrics = coco_metrics(self.coco_gt, results, max_dets=self.max_dets, class_names=names)
        for key in TABLE_KEYS:
            self.log(f"val/{key}", float(self.metrics[key]), prog_bar=key in ("mAP", "AP50"), sync_dist=False)
        if self.trainer.sanity_checking or self.trainer.state.fn != "fit":
            return
        n = max(1, self._n_loss)
        row: dict[str, Any] = {key: f"{self._losses.get(key, 0.0) / n:.5f}" for key in LOSS_KEYS}
        row["loss"] = f"{sum(self._losses.values()) / n:.5f}"
        row.update({f"val_{k}": f"{self.metrics[k]:.5f}" for k in TABLE_KEYS})
        speed = self._seen * self.trainer.world_size / max(self._train_s, 1e-9)
        row.update(epoch=self.current_epoch, step=self.global_step, images_per_s=f"{speed:.2f}",
                   lr=f"{self.optimizers().param_groups[0]['lr']:.6e}")
        self.csv_rows.append(row)
        self._losses, self._n_loss, self._seen, self._train_s = {}, 0, 0, 0.0
        if self.trainer.is_global_zero:
            print(f"\nepoch {self.current_epoch} ({speed:.1f} images/s):\n" + format_table({"val": self.metrics}))

    # -- optimiser and checkpoints ----------------------------------------------------------------------

    def configure_optimizers(self):
        ocfg = self.cfg["optim"]
        lr = ocfg["lr"]
        groups = param_groups(self.model, lr, ocfg["weight_decay"], ocfg["layer_decay"])
        optimizer = adamw(groups, lr, ocfg["betas"], self.cfg)
        per_epoch = max(1, int(self.trainer.estimated_stepping_batches) // self.cfg["epochs"])
        milestones = [int(m) * per_epoch for m in ocfg["milestones"]]
        warmup, gamma = ocfg["warmup_iters"], ocfg["gamma"]

        def schedule(step: int) -> float:
            return step_schedule(step, warmup, milestones, gamma)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


# -- data ---------------------------------------------------------------------------------------------


def detection_datasets(cfg: dict) -> tuple[CocoDetection, CocoDetection]:
    """(train, val) datasets of ``data.root``; training images without boxes follow ``data.keep_empty``.

    Training images are resized to ``model.img_size`` here (so flips and boxes stay consistent) and the
    detector's own resize is then a no-op; validation images keep their size, the detector resizes them and
    maps its boxes back to the file's pixels, which is what the COCO ground truth is in.
    """
    data = cfg["data"]
    scaling = IntensityScaling.from_config(data["scaling"])
    size = cfg["model"]["img_size"]
    train = CocoDetection(
        data["root"], data["train_split"], transforms=detection_transforms(True, size),
        scaling=scaling, keep_empty=data["keep_empty"],
    )
    val = CocoDetection(
        data["root"], data["val_split"], transforms=detection_transforms(False, size),
        scaling=scaling, keep_empty=True,
    )
    if class_info(train) != class_info(val):
        raise DataError(
            f"{train.ann_file} and {val.ann_file} have different categories "
            f"({list(train.class_names)} vs {list(val.class_names)}); use one category list for all splits"
        )
    if len(train) == 0:
        raise DataError(f"{train.ann_file}: no training image with a box (pass data.keep_empty=true to use empty ones)")
    if len(val) == 0:
        raise DataError(f"{val.ann_file}: no validation images; validation needs at least one")
    return train, val


# -- the command ----------------------------------------------------------------------------------------


def check_resume(path: Path, module: ViTDetFinetuning) -> tuple[int, int]:
    """Refuse a damaged checkpoint, another architecture or other classes with one line; return where to continue
    (:func:`resume_position`: epoch, batches of it trained)."""
    ckpt = read_checkpoint_header(path)
    theirs, ours = ckpt["state_dict"], module.state_dict()
    for key, value in ours.items():
        if key not in theirs or tuple(theirs[key].shape) != tuple(value.shape):
            found = "missing" if key not in theirs else f"{tuple(theirs[key].shape)}"
            raise CheckpointError(
                f"checkpoint {path}: {key} is {found} there, {tuple(value.shape)} with this config; resume with the "
                "model settings of that run (its config.yaml) or start a new run (another out=)"
            )
    classes = (ckpt.get("hyper_parameters") or {}).get("classes") or {}
    if list(classes.get("names", [])) != list(module.classes["names"]):
        raise CheckpointError(
            f"checkpoint {path}: trained for classes {classes.get('names')}, the dataset has "
            f"{module.classes['names']}; resume on the same dataset or start a new run (another out=)"
        )
    return resume_position(ckpt, module.cfg, path)


def run_finetune(cfg: dict) -> Path:
    """``sarmae finetune``: train with validation every ``eval.every`` epochs; returns the run folder."""
    cfg = finetune_config(cfg)
    if not cfg["data"]["root"]:
        raise ConfigError("no dataset: pass data.root=PATH (a COCO / SARDet-100K root with Annotations/)")
    L.seed_everything(cfg["seed"], workers=True, verbose=False)
    run_dir = prepare_run_dir(cfg, "finetune")
    resume = resolve_resume(cfg, run_dir)
    train, val = detection_datasets(cfg)
    module = ViTDetFinetuning(cfg, class_info(train), coco_gt=val.coco_gt)
    train_loader = resumable_loader(SkipBadSamples(train, strict=cfg["data"]["strict"]), cfg["batch_size"],
                                    seed=cfg["seed"], shuffle=True, workers=cfg["data"]["workers"],
                                    collate_fn=collate_detection)
    if resume is not None:
        epoch, batches = check_resume(resume, module)
        note = f"resuming {resume} after {epoch} of {cfg['epochs']} epochs"
        if epoch >= int(cfg["epochs"]):
            note += f" (nothing left to train: pass epochs=N with N > {epoch} to continue)"
        train_loader.sampler.resume_at(epoch, batches * cfg["batch_size"])
        if batches:
            note = f"resuming {resume} in epoch {epoch} after {batches} of its batches"
    else:
        module.initialise_backbone()
        note = "fresh start" + (" (resume=auto: no weights/last.ckpt yet)" if cfg["resume"] else "")
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "weights", filename="best", monitor="val/mAP", mode="max",
        save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False,
    )
    trainer = build_trainer(cfg, run_dir, [CsvMetrics(run_dir / "metrics.csv", METRIC_COLUMNS)],
                            checkpoint=checkpoint, val_every=cfg["eval"]["every"],
                            limit_val_batches=cfg["trainer"]["limit_val_batches"])
    if trainer.is_global_zero:
        print(f"fine-tuning on {len(train)} images, validating on {len(val)} -> {run_dir}: {note}")
    try:
        trainer.fit(module, train_loader, detection_loader(val, cfg), ckpt_path=resume, weights_only=True)
    except SarmaeError as exc:
        raise one_line_error(exc) from None
    except StopTraining as stop:
        raise Stopped(stop.signum, stop.advice()) from None
    if trainer.is_global_zero:  # the last validation's table was printed at its epoch end
        best = f"{float(checkpoint.best_model_score):.4f}" if checkpoint.best_model_score is not None else "n/a"
        print(f"done -> {run_dir}: weights/best.ckpt (val mAP {best}), weights/last.ckpt, metrics.csv")
    return run_dir
