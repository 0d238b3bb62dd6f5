"""What every training command shares: the run folder, the Lightning Trainer, resume and RNG state.

Run folder layout (Ultralytics-like)::

    runs/<command>/<name>/
        config.yaml        effective config (after overrides)
        metrics.csv        one row per logged step / epoch, appended across resumes
        tb/                TensorBoard logs
        weights/last.ckpt  written atomically every epoch (Lightning saves through an fsspec
                           transaction: temp file, then move), plus periodic / best checkpoints
"""

from __future__ import annotations

import csv
import logging
import random
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from sarmae.config import save_config
from sarmae.errors import CheckpointError, ConfigError

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "32", "bf16", "16")


def run_dir_for(cfg: dict, command: str) -> Path:
    """``cfg['out']`` if given, else ``runs/<command>/<cfg['name']>``."""
    if cfg.get("out"):
        return Path(cfg["out"])
    return Path("runs") / command / str(cfg.get("name", command))


def resolve_resume(cfg: dict, run_dir: Path) -> Path | None:
    """``resume=auto`` -> ``weights/last.ckpt`` of this run if it exists; ``resume=PATH`` -> PATH."""
    resume = cfg.get("resume")
    if resume in (None, False, ""):
        return None
    if resume == "auto":
        last = run_dir / "weights" / "last.ckpt"
        return last if last.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"resume={resume}: no such checkpoint file; use resume=auto or a .ckpt path")
    return path


def prepare_run_dir(cfg: dict, command: str) -> Path:
    """Create the run folder and save the effective config into it (rank 0 only)."""
    run_dir = run_dir_for(cfg, command)
    if _global_rank() == 0:
        (run_dir / "weights").mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    return run_dir


def _global_rank() -> int:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def capture_rng_state() -> dict[str, Any]:
    """Every RNG that affects training (masks, sampling, augmentations), for an exact resume."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_torch(np.random.get_state()),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state_to_torch(state: tuple) -> tuple:
    """numpy's RNG state with its key array as a tensor, so ``torch.load(weights_only=True)`` accepts it."""
    name, keys, pos, has_gauss, cached = state
    return (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))


def restore_rng_state(state: dict[str, Any] | None) -> None:
    if not state:
        return
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    py_state = state["python"]
    random.setstate((py_state[0], tuple(py_state[1]), py_state[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8) for s in state["cuda"]])


class CsvMetrics(Callback):
    """Append rows to ``metrics.csv`` with fixed columns; on resume, rows past the checkpoint are dropped.

    Rows come from ``LightningModule.csv_rows`` (a list the module fills), so the module decides what a row is
    (one per logged step for MAE, one per epoch for the detector).
    """

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = Path(path)
        self.columns = columns

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        kept: list[dict] = []
        if self.path.is_file() and trainer.global_step > 0:
            with self.path.open(newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(float(row["step"])) <= trainer.global_step]
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)

    def flush(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = getattr(pl_module, "csv_rows", [])
        if trainer.global_rank == 0 and rows:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerows(rows)
        rows.clear()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flush(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flush(trainer, pl_module)


def build_trainer(
    cfg: dict,
    run_dir: Path,
    callbacks: list[Callback],
    *,
    checkpoint: ModelCheckpoint | None = None,
    val_every: int | None = None,
) -> L.Trainer:
    """A Lightning Trainer from the ``trainer`` config section (devices, precision, DDP, accumulation)."""
    tcfg = dict(cfg.get("trainer") or {})
    precision = str(tcfg.get("precision", "32-true"))
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision}: use one of {', '.join(PRECISIONS)}")
    accelerator = tcfg.get("accelerator", "auto")
    if precision.startswith("16") and not torch.cuda.is_available():
        warnings.warn("fp16 mixed precision needs a GPU; using bf16-mixed on CPU", stacklevel=2)
        precision = "bf16-mixed"
    if checkpoint is None:
        checkpoint = ModelCheckpoint(dirpath=run_dir / "weights", save_top_k=0, save_last=True)
    strategy = tcfg.get("strategy", "auto")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    return L.Trainer(
        default_root_dir=run_dir,
        accelerator=accelerator,
        devices=tcfg.get("devices", "auto"),
        num_nodes=int(tcfg.get("num_nodes", 1)),
        strategy=strategy,
        precision=precision,
        max_epochs=int(cfg["epochs"]),
        accumulate_grad_batches=int(tcfg.get("accumulate", 1)),
        gradient_clip_val=tcfg.get("clip_grad"),
        logger=TensorBoardLogger(save_dir=run_dir, name="tb", version="", default_hp_metric=False),
        callbacks=[checkpoint, TQDMProgressBar(refresh_rate=int(tcfg.get("progress_every", 1))), *callbacks],
        log_every_n_steps=int(tcfg.get("log_every", 10)),
        check_val_every_n_epoch=val_every or 1,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        limit_train_batches=tcfg.get("limit_train_batches"),
        limit_val_batches=tcfg.get("limit_val_batches"),
        deterministic=False,
        use_distributed_sampler=True,
    )
