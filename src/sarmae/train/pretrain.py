"""MAE pre-training (paper II-A, III-B) as a Lightning module, plus the ``sarmae pretrain`` entry point.

Recipe (reference MAE): AdamW betas (0.9, 0.95), weight decay 0.05 except biases / norms / pos embeddings,
lr = blr x effective_batch / base_batch, linear warm-up then half-cycle cosine, stepped every iteration.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from sarmae.config import complete_config
from sarmae.data.io import IntensityScaling
from sarmae.data.robust import SkipBadSamples, collate_skip_bad
from sarmae.data.sampling import resumable_loader
from sarmae.data.transforms import IMAGENET_MEAN, IMAGENET_STD, mae_transforms
from sarmae.data.unlabeled import UnlabeledImages
from sarmae.errors import CheckpointError, ConfigError, SarmaeError, Stopped
from sarmae.models.checkpoints import save_encoder_safetensors
from sarmae.models.mae import MAE_DEFAULTS, MaskedAutoencoder, build_mae
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
    report,
    resolve_resume,
    resume_position,
    stop_dataloader_workers,
)

SCHEMA_CONFIG = "mae_vitb16_sardet100k"  # the paper's config lists every pre-training key with its default
METRIC_COLUMNS = ["epoch", "step", "loss", "lr", "images_per_s"]


def pretrain_config(cfg: dict) -> dict:
    """The checked, complete pre-training config (:func:`~sarmae.config.complete_config`), run length checked."""
    cfg = complete_config(cfg, SCHEMA_CONFIG, ("size", *MAE_DEFAULTS), open_sections=("data.scaling",))
    decide_precision(cfg)
    for key in ("epochs", "batch_size"):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"{key}={cfg[key]!r}: must be a whole number >= 1")
    return cfg


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """lr multiplier at iteration ``step``: linear warm-up over ``warmup`` steps, then half-cycle cosine."""
    if warmup > 0 and step < warmup:
        return step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norm weights (all 1-D tensors) and position embeddings get no weight decay."""
    return param.ndim <= 1 or name.endswith(".bias") or "pos_embed" in name


class MAEPretraining(SavesRngState, L.LightningModule):
    """Wraps :class:`MaskedAutoencoder` (at ``self.model``) with the optimiser, schedule and logging.

    One ``metrics.csv`` row per ``trainer.log_every`` optimiser steps (and at the end of each epoch): ``loss`` is
    the mean over the micro-batches of that step (gradient accumulation) and over the ranks (DDP), ``lr`` the
    learning rate the step used.
    """

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        cfg = pretrain_config(cfg)
        self.save_hyperparameters({"cfg": cfg})
        self.cfg = cfg
        self.model: MaskedAutoencoder = build_mae(cfg["model"])
        check_target_normalisation(cfg, self.model)
        self.csv_rows: list[dict] = []
        self.peak_lr = 0.0
        self.effective_batch = 0
        self._skipped = 0
        self.skipped_total = 0  # unreadable images skipped in this session (all ranks)
        self._seen = 0
        self._tic = time.perf_counter()
        self._window: list[torch.Tensor] = []  # losses of the micro-batches since the last optimiser step
        self._stepped_at = 0  # global_step at the last optimiser step seen
        self._lr = 0.0
        self._compiled = None

    def configure_model(self) -> None:
        if self.cfg["trainer"]["compile"] and self._compiled is None:
            # Not registered as a submodule: the state dict keeps the plain MAE key names.
            # Static shapes: MaskedAutoencoder.random_masking draws torch.rand(generator=...), which dynamic-shape
            # tracing rejects; a short last batch or skipped images then cost one recompile each.
            object.__setattr__(self, "_compiled", torch.compile(self.model, dynamic=False))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images (N, 3, H, W) normalised -> (loss, pred (N, L, p*p*3), mask (N, L))."""
        model = self._compiled if self._compiled is not None else self.model
        return model(images)

    def training_step(self, batch: tuple[torch.Tensor, int], batch_idx: int) -> torch.Tensor | None:
        images, n_skipped = batch
        self._skipped += int(n_skipped)
        if images.numel() == 0:  # every image of this batch was unreadable
            if self.trainer.world_size == 1:
                return None  # Lightning skips the batch
            # DDP needs a backward on every rank: a zero loss that touches every trainable parameter.
            return sum((p * 0).sum() for p in self.model.parameters() if p.requires_grad)
        loss, _, _ = self(images)
        self._seen += images.shape[0]
        self._window.append(loss.detach())
        # The lr this micro-batch's optimiser step will use (Lightning steps the scheduler before on_train_batch_end).
        self._lr = self.optimizers().param_groups[0]["lr"]
        self.log("loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self._log_step()
        stop_point(self.trainer, batch_idx)

    def running_state(self) -> dict[str, Any]:
        return {"_skipped": self._skipped}

    def _log_step(self) -> None:
        if self.global_step == self._stepped_at:
            return  # still accumulating gradients: no optimiser step yet
        self._stepped_at = self.global_step
        lr = self._lr
        self.log("lr", lr, prog_bar=True)
        window, self._window = self._window, []
        if self.global_step % self.trainer.log_every_n_steps and not self.trainer.is_last_batch:
            return
        # Sum and count over the ranks (every rank gets here at the same steps, even one whose batch was all bad).
        totals = torch.stack([torch.stack(window).sum(), torch.tensor(float(len(window)), device=self.device)]) \
            if window else torch.zeros(2, device=self.device)
        loss_sum, count = (float(v) for v in self.trainer.strategy.reduce(totals, reduce_op="sum"))
        if count == 0:
            return  # every image of this step was unreadable: nothing to report
        loss = loss_sum / count
        now = time.perf_counter()
        speed = self._seen * self.trainer.world_size / max(now - self._tic, 1e-9)
        self._seen, self._tic = 0, now
        self.log("img/s", speed, prog_bar=True)
        self.csv_rows.append(
            {
                "epoch": self.current_epoch,
                "step": self.global_step,
                "loss": f"{loss:.6f}",
                "lr": f"{lr:.6e}",
                "images_per_s": f"{speed:.2f}",
            }
        )

    def on_train_start(self) -> None:
        self._stepped_at = self.global_step
        self._tic = time.perf_counter()  # (a run resumed mid-epoch skips on_train_epoch_start)
        ocfg = self.cfg["optim"]
        rule = "" if ocfg["lr"] else f" = blr {ocfg['blr']:g} x {self.effective_batch} / {ocfg['base_batch']}"
        report(self.trainer, f"effective batch {self.effective_batch}, peak lr {self.peak_lr:.4g}{rule}")

    def on_train_epoch_start(self) -> None:
        self._tic, self._seen = time.perf_counter(), 0
        self._window = []

    def on_train_epoch_end(self) -> None:
        skipped = int(self.trainer.strategy.reduce(torch.tensor(float(self._skipped)), reduce_op="sum"))
        if skipped:
            report(self.trainer, f"epoch {self.current_epoch}: skipped {skipped} unreadable images (see warnings)")
        self.skipped_total += skipped
        self._skipped = 0

    def configure_optimizers(self):
        ocfg = self.cfg["optim"]
        batch = self.cfg["batch_size"] * self.trainer.accumulate_grad_batches * self.trainer.world_size
        lr = peak_lr(ocfg, batch)
        self.peak_lr, self.effective_batch = lr, batch
        optimizer = adamw(param_groups(self.model, ocfg["weight_decay"]), lr, ocfg["betas"], self.cfg)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(round(total * ocfg["warmup_epochs"] / self.cfg["epochs"]))
        min_lr = ocfg["min_lr"]
        if min_lr > lr:
            raise ConfigError(f"optim.min_lr={min_lr:g} is above the peak lr {lr:g}; lower min_lr or raise blr")
        min_ratio = min_lr / lr if lr > 0 else 0.0

        def schedule(step: int) -> float:
            return warmup_cosine(step, total, warmup, min_ratio)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def check_target_normalisation(cfg: dict, model: MaskedAutoencoder) -> None:
    """The ``gradients`` target undoes the ImageNet mean / std to get intensity: refuse other ``data.mean/std``."""
    data = cfg["data"]
    custom = [key for key, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD))
              if data[key] is not None and tuple(float(v) for v in data[key]) != default]
    if model.target == "gradients" and custom:
        raise ConfigError(
            f"model.target=gradients recovers intensity with the default (ImageNet) data.mean / data.std; drop "
            f"data.{' and data.'.join(custom)} or use model.target=pixels"
        )


def peak_lr(ocfg: dict, effective_batch: int) -> float:
    """``optim.lr`` if set, else the MAE rule ``blr x effective_batch / base_batch``."""
    if ocfg["lr"]:
        return float(ocfg["lr"])
    return ocfg["blr"] * effective_batch / ocfg["base_batch"]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weights (incl. ``cls_token`` / ``mask_token``) and the :func:`no_decay` rest.

    Frozen parameters (the fixed sin-cos position embeddings) are left out, as in the reference MAE.
    """
    decay, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if no_decay(name, param) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def check_resume(path: Path, module: MAEPretraining) -> tuple[int, int]:
    """Refuse a damaged checkpoint or one of another architecture with one line; return where to continue
    (:func:`resume_position`: epoch, batches of it trained)."""
    ckpt = read_checkpoint_header(path)
    theirs, ours = ckpt["state_dict"], module.state_dict()
    for key, value in ours.items():
        if key not in theirs:
            raise CheckpointError(
                f"checkpoint {path}: has no '{key}'; it is not an MAE pre-training checkpoint of this model"
            )
        if tuple(theirs[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"checkpoint {path}: {key} is {tuple(theirs[key].shape)} there, {tuple(value.shape)} with this "
                "config; resume with the model settings of that run (its config.yaml)"
            )
    return resume_position(ckpt, module.cfg, path)


def pretrain_sources(cfg: dict) -> list[Path]:
    """Unlabeled image sources: ``data.images`` (folders, a list allowed) and/or a COCO json of ``data.root``;
    an empty list when ``data.shards`` is set instead."""
    data = cfg["data"]
    sources: list[Path] = []
    images = data["images"]
    if images:
        sources += [Path(p) for p in (images if isinstance(images, list) else [images])]
    if data["root"]:
        sources.append(Path(data["root"]) / "Annotations" / f"{data['split']}.json")
    if data["shards"] and sources:
        raise ConfigError("data.shards and data.images / data.root are both set: pack every source into the shards "
                          "(sarmae data pack SRC... OUT) or leave data.shards=null")
    if not sources and not data["shards"]:
        raise ConfigError("no pre-training images: set data.images=FOLDER, data.root=SARDET100K_ROOT or "
                          "data.shards=PACKED (sarmae data pack)")
    return sources


class PretrainData(L.LightningDataModule):
    """The pre-training batches ``(images [N, 3, S, S], skipped)``, from image files or streamed from
    ``data.shards``. The loader is made when Lightning asks for it, once the DDP processes exist: LitData reads
    the world size when a dataset is created, and each rank must stream its own part. ``position`` = (epoch,
    batches of it trained) where a resumed run continues."""

    def __init__(self, cfg: dict, dataset: Any, position: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.cfg, self.dataset, self.position = cfg, dataset, position

    def train_dataloader(self) -> DataLoader:
        data, batch_size = self.cfg["data"], self.cfg["batch_size"]
        if data["shards"]:
            from sarmae.data.shards import streaming_loader

            dataset = build_pretrain_dataset(self.cfg)  # this rank's view of the shards
            return streaming_loader(dataset, batch_size, data["workers"], collate_skip_bad, self.position or (0, 0))
        loader = resumable_loader(self.dataset, batch_size, seed=self.cfg["seed"], shuffle=data["shuffle"],
                                  workers=data["workers"], collate_fn=collate_skip_bad,
                                  drop_last=len(self.dataset) >= 2 * batch_size)
        if self.position is not None:
            epoch, batches = self.position
            loader.sampler.resume_at(epoch, batches * batch_size)
        return loader


def build_pretrain_dataset(cfg: dict) -> Any:
    """The images of ``data.images`` / ``data.root`` (bad ones skipped and counted), or the ``data.shards``."""
    data = cfg["data"]
    transform = mae_transforms(
        size=cfg["model"]["img_size"],
        random_resized_crop=data["random_resized_crop"],
        mean=tuple(data["mean"] or IMAGENET_MEAN),
        std=tuple(data["std"] or IMAGENET_STD),
    )
    if pretrain_sources(cfg) == []:
        from sarmae.data.shards import packed_images

        return packed_images(data["shards"], transform, shuffle=data["shuffle"], seed=cfg["seed"])
    images = UnlabeledImages(
        pretrain_sources(cfg), transform=transform, scaling=IntensityScaling.from_config(data["scaling"])
    )
    return SkipBadSamples(images, strict=data["strict"])


class ReconstructionFigures(Callback):
    """Every ``every`` epochs, save the reconstruction figure (paper Figure 2) of a few fixed images."""

    def __init__(self, cfg: dict, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.every = cfg["figure"]["every"] or 0
        if cfg["model"]["target"] == "gradients":
            self.every = 0  # a gradient-target MAE predicts no pixels to draw
        self.count = cfg["figure"]["images"]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if not trainer.is_global_zero or self.every <= 0 or not pretrain_sources(self.cfg):
            return  # (packed shards alone hold no image files to draw)
        if epoch % self.every and epoch != trainer.max_epochs:
            return
        from sarmae.infer.reconstruct import save_reconstruction_figure

        save_reconstruction_figure(
            pl_module.model,
            pretrain_sources(self.cfg),
            self.run_dir / "figures" / f"reconstruction_epoch{epoch:03d}.png",
            cfg=self.cfg,
            count=self.count,
        )


class ExportEncoder(Callback):
    """At the end of training write ``encoder.safetensors`` (timm / reference MAE key names)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            save_encoder_safetensors(pl_module.model, self.run_dir / "encoder.safetensors")


def run_pretrain(cfg: dict) -> Path:
    """``sarmae pretrain``: train, checkpoint every epoch, export the encoder. Returns the run folder."""
    cfg = pretrain_config(cfg)
    L.seed_everything(cfg["seed"], workers=True, verbose=False)
    run_dir = prepare_run_dir(cfg, "pretrain")
    resume = resolve_resume(cfg, run_dir)
    dataset = build_pretrain_dataset(cfg)
    module = MAEPretraining(cfg)
    position = check_resume(resume, module) if resume else None  # (epoch, batches of it trained)
    finished = position[0] if position else 0
    callbacks = [
        CsvMetrics(run_dir / "metrics.csv", METRIC_COLUMNS),
        ReconstructionFigures(cfg, run_dir),
        ExportEncoder(run_dir),
    ]
    trainer = build_trainer(cfg, run_dir, callbacks)
    if trainer.is_global_zero:
        if position and position[1]:
            note = f"resuming {resume} in epoch {position[0]} after {position[1]} of its batches"
        elif resume:
            note = f"resuming {resume} after {finished} of {cfg['epochs']} epochs"
            if finished >= int(cfg["epochs"]):
                note += f" (nothing left to train: pass epochs=N with N > {finished} to continue)"
        elif cfg["resume"]:
            note = "fresh start (resume=auto: no weights/last.ckpt yet)"
        elif (run_dir / "weights" / "last.ckpt").is_file():
            note = "fresh start, replacing the run already in this folder (resume=auto would continue it)"
        else:
            note = "fresh start"
        print(f"pre-training on {len(dataset)} images -> {run_dir}: {note}")
        if cfg["data"]["shards"]:
            print(f"streaming {cfg['data']['shards']}: pixels as packed (data.scaling was applied by `sarmae data "
                  "pack`); no reconstruction figures during training (they read image files; draw them afterwards "
                  "with `sarmae reconstruct RUN/weights/last.ckpt IMAGES`)")
    error: BaseException | None = None
    try:
        trainer.fit(module, datamodule=PretrainData(cfg, dataset, position), ckpt_path=resume,
                    weights_only=True)
    except SarmaeError as exc:
        stop_dataloader_workers(exc)
        error = one_line_error(exc)
    except StopTraining as stop:
        stop_dataloader_workers(stop)
        error = Stopped(stop.signum, stop.advice())
    if error is not None:
        raise error
    return run_dir
