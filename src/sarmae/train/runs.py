"""What every training command shares: the run folder, the Lightning Trainer, resume and RNG state.

Run folder layout (Ultralytics-like)::

    runs/<command>/<name>/
        config.yaml           effective config (after overrides)
        metrics.csv           one row per logged step / epoch, kept consistent across resumes
        tb/                   TensorBoard logs
        weights/last.ckpt     after every epoch, atomically (temp file in the same folder, fsync, rename)
        weights/epochNNN.ckpt every ``trainer.save_every`` epochs (plus ``best.ckpt`` for fine-tuning)

A run killed at any moment leaves a complete ``last.ckpt`` of its last finished epoch (SIGTERM and Ctrl-C: of
its last finished step, :mod:`sarmae.train.preemption`); ``resume=auto`` continues from it with the model,
optimiser, schedule, loop counters, data position and every RNG restored.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import random
import shutil
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from sarmae.config import save_config
from sarmae.errors import CheckpointError, ConfigError, SarmaeError
from sarmae.files import atomic_open, atomic_write
from sarmae.models.checkpoints import open_checkpoint
from sarmae.precision import resolve_precision
from sarmae.train.preemption import Preemption, stop_after_checkpoint


def adamw(groups: list[dict], lr: float, betas: tuple[float, float], cfg: dict) -> torch.optim.AdamW:
    """AdamW as both commands train with it: fused (one kernel over all tensors; the MAE ViT-B step on a 2-core
    CPU goes 6.05 -> 6.80 img/s with it alone, docs/profile.md), except for fp16 with gradient clipping, where
    Lightning must unscale the gradients itself and refuses an optimiser that unscales them internally."""
    tcfg = cfg["trainer"]
    fused = not (str(tcfg["precision"]).startswith("16") and tcfg["clip_grad"])
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(float(b) for b in betas), fused=fused)


def decide_precision(cfg: dict) -> None:
    """``trainer.precision: auto`` replaced in ``cfg`` by what this machine computes fast
    (:func:`sarmae.precision.resolve_precision`), so the run folder's ``config.yaml`` records the value used."""
    tcfg = cfg["trainer"]
    tcfg["precision"] = resolve_precision(tcfg["precision"], tcfg["accelerator"])


def run_dir_for(cfg: dict, command: str) -> Path:
    """``cfg['out']`` if given, else ``runs/<command>/<cfg['name']>``."""
    if cfg["out"]:
        return Path(cfg["out"])
    return Path("runs") / command / str(cfg["name"] or command)


def resolve_resume(cfg: dict, run_dir: Path) -> Path | None:
    """``resume=auto`` -> ``weights/last.ckpt`` of this run if it exists (else None: a fresh start);
    ``resume=PATH`` -> PATH, which must exist."""
    resume = cfg["resume"]
    if resume in (None, False, ""):
        return None
    if resume == "auto" or resume is True:
        last = run_dir / "weights" / "last.ckpt"
        return last if last.is_file() else None
    path = Path(str(resume))
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


# -- checkpoint files -------------------------------------------------------------------------------


def verify_checkpoint_file(path: Path) -> None:
    """Cheap integrity check before a resume: a torch zip archive whose members all pass their CRC.

    torch itself reads a file with flipped bytes in a tensor without complaint, so a damaged
    ``last.ckpt`` would silently resume from garbage; the zip CRCs catch that and truncation.
    """
    advice = "the file is damaged; resume from another checkpoint (weights/epochNNN.ckpt) or drop resume="
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(f"checkpoint {path}: not a complete torch checkpoint ({exc}); {advice}") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path}: corrupt data in '{bad}' (CRC mismatch); {advice}")


def read_checkpoint_header(path: Path) -> dict[str, Any]:
    """The checkpoint dict, memory-mapped (tensors are not read into RAM), after :func:`verify_checkpoint_file`."""
    verify_checkpoint_file(path)
    advice = "resume from another checkpoint (weights/epochNNN.ckpt) or drop resume="
    ckpt = open_checkpoint(path, mmap=True, advice=advice)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "loops" not in ckpt:
        raise CheckpointError(f"checkpoint {path}: not a sarmae training checkpoint (weights/last.ckpt of a run)")
    return ckpt


def resume_position(ckpt: dict[str, Any], cfg: dict | None = None, path: Path | None = None) -> tuple[int, int]:
    """(epoch to continue, batches of it already trained) of a training checkpoint: (N, 0) after N whole epochs,
    (N, k) when it was written after batch k of epoch N (a preemption). Such a position counts batches, so with
    ``cfg`` a mid-epoch resume must keep the stopped run's ``batch_size`` and ``trainer.accumulate``."""
    loop = ckpt.get("loops", {}).get("fit_loop", {})
    epochs = loop.get("epoch_progress", {}).get("current", {})
    finished = int(epochs.get("processed", 0))
    if int(epochs.get("started", 0)) <= finished:
        return finished, 0  # saved at an epoch end: the next epoch starts from its beginning
    batches = int(loop.get("epoch_loop.batch_progress", {}).get("current", {}).get("processed", 0))
    if cfg is not None:
        theirs = (ckpt.get("hyper_parameters") or {}).get("cfg") or {}
        shapes = {"batch_size": (theirs.get("batch_size"), cfg["batch_size"]),
                  "trainer.accumulate": ((theirs.get("trainer") or {}).get("accumulate"), cfg["trainer"]["accumulate"])}
        for key, (stopped, now) in shapes.items():
            if stopped != now:
                raise CheckpointError(f"checkpoint {path}: stopped in the middle of epoch {finished} with "
                                      f"{key}={stopped}; resume with that value (not {now}), or from an epoch-end "
                                      "checkpoint")
    return finished, batches


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temp file beside the target, fsync, then ``os.replace``.

    Lightning's own atomic save goes through a temp file in ``/tmp`` and ``shutil.move``, which is a
    plain copy (not atomic) when ``/tmp`` and the run folder are on different file systems; it also
    keeps a second copy of the whole checkpoint in RAM. Reading errors become :class:`CheckpointError`.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {path}: no such file") from None
        except Exception as exc:  # noqa: BLE001
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(f"checkpoint {path}: cannot be read ({reason})") from None


class EpochCheckpoints(Checkpoint):
    """``weights/last.ckpt`` after every training epoch; a copy ``weights/epochNNN.ckpt`` every ``every`` epochs.

    (Lightning's ``ModelCheckpoint(save_last=True)`` writes ``last`` only when it also saves a top-k file,
    i.e. not every epoch.) Being a ``Checkpoint``, Lightning runs it after the other callbacks and after the
    module's ``on_train_epoch_end``, so the saved state includes everything the epoch did.
    """

    def __init__(self, dirpath: Path, every: int = 0) -> None:
        self.dirpath = Path(dirpath)
        self.every = int(every or 0)

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        # Every rank calls it (a barrier); the strategy writes the file on rank 0 only.
        trainer.save_checkpoint(self.last_path, weights_only=False)
        epoch = trainer.current_epoch + 1
        if self.every > 0 and epoch % self.every == 0 and trainer.is_global_zero:
            atomic_write(self.dirpath / f"epoch{epoch:03d}.ckpt", lambda tmp: shutil.copyfile(self.last_path, tmp))
        if epoch < trainer.max_epochs:
            stop_after_checkpoint(trainer, self.last_path)  # a signal during the epoch's last step


# -- RNG ----------------------------------------------------------------------------------------------


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
    """Inverse of :func:`capture_rng_state` (missing parts are left alone; CUDA only if the device count matches)."""
    if not state:
        return
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    py_state = state["python"]
    random.setstate((py_state[0], tuple(py_state[1]), py_state[2]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in cuda])


class SavesRngState:
    """LightningModule mixin (list it first): every checkpoint carries the RNG state and the module's running
    totals (:meth:`running_state`: e.g. losses summed since the last logged row), restored on resume, so a run
    resumed in the middle of an epoch logs what an uninterrupted one would. It also records the number of
    processes: a mid-epoch position counts each rank's batches, so it holds only for the same number."""

    def running_state(self) -> dict[str, Any]:
        return {}

    def load_running_state(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_state"] = capture_rng_state()
        checkpoint["running_state"] = self.running_state()
        checkpoint["world_size"] = self.trainer.world_size

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        stopped, now = checkpoint.get("world_size"), self.trainer.world_size
        epoch, batches = resume_position(checkpoint)
        if batches and stopped is not None and stopped != now:
            raise CheckpointError(f"checkpoint {self.trainer.ckpt_path}: stopped in the middle of epoch {epoch} on "
                                  f"{stopped} processes; resume on {stopped} (trainer.devices x trainer.num_nodes, "
                                  f"not {now}), or from an epoch-end checkpoint")
        restore_rng_state(checkpoint.get("rng_state"))
        self.load_running_state(checkpoint.get("running_state") or {})


# -- metrics.csv and the progress bar -------------------------------------------------------------------


class CsvMetrics(Callback):
    """Append rows to ``metrics.csv`` with fixed columns; on resume, rows past the checkpoint are dropped.

    Rows come from ``LightningModule.csv_rows`` (a list the module fills), so the module decides what a row is
    (one per logged step for MAE, one per epoch for the detector). The file is reconciled in ``on_train_start``,
    the first hook after Lightning restored the loop counters (``on_fit_start`` still sees ``global_step=0``),
    so rows written after the checkpoint by a killed run are not duplicated.
    """

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = Path(path)
        self.columns = columns

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        kept: list[dict] = []
        if self.path.is_file() and trainer.global_step > 0:
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                if "step" in (reader.fieldnames or []):
                    kept = [row for row in reader if _as_int(row.get("step")) <= trainer.global_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(kept)

    def flush(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = getattr(pl_module, "csv_rows", [])
        if trainer.global_rank == 0 and rows:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n").writerows(rows)
        rows.clear()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flush(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flush(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        with contextlib.suppress(OSError):  # (a full disk must not replace the error being reported)
            self.flush(trainer, pl_module)  # rows past the checkpoint a resumed run starts from are dropped then


def _as_int(text: str | None) -> int:
    try:
        return int(float(text or "inf"))
    except (OverflowError, ValueError):
        return 1 << 62  # unparsable rows sort after every checkpoint and are dropped


class RunProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar (per-epoch elapsed<remaining) plus ``eta``: time left for the whole run.

    The rate is measured on this session's optimiser steps only, so a resumed run does not count the
    steps it restored as instantaneous.
    """

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self._start: tuple[float, int] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._start = (time.monotonic(), trainer.global_step)

    def run_eta(self, trainer: L.Trainer) -> str | None:
        if self._start is None:
            return None
        done = trainer.global_step - self._start[1]
        total = trainer.estimated_stepping_batches
        if done <= 0 or not np.isfinite(total):
            return None
        seconds = (time.monotonic() - self._start[0]) / done * max(0, int(total) - trainer.global_step)
        return format_duration(seconds)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # Close the bars so a failed run does not print a stale bar again when the interpreter exits.
        for name in ("_train_progress_bar", "_val_progress_bar", "_test_progress_bar", "_predict_progress_bar"):
            bar = getattr(self, name, None)
            if bar is not None:
                bar.close()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        eta = self.run_eta(trainer)
        if eta is not None:
            items["eta"] = eta
        return items


def report(trainer: L.Trainer, text: str) -> None:
    """Print one line on rank 0 without tearing the progress bar (``tqdm.write`` when a bar is shown)."""
    if not trainer.is_global_zero:
        return
    bar = trainer.progress_bar_callback
    if isinstance(bar, TQDMProgressBar) and bar.is_enabled:
        bar.print(text)
    else:
        print(text)


def format_duration(seconds: float) -> str:
    """``3725.2`` -> ``'1:02:05'``; days are written as ``'2d 03:00:00'``."""
    seconds = int(round(max(0.0, seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    text = f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days}d {hours:02d}:{rest // 60:02d}:{rest % 60:02d}" if days else text


# -- errors raised inside trainer.fit --------------------------------------------------------------------


def one_line_error(exc: SarmaeError) -> SarmaeError:
    """A fresh copy of a user error, without traceback, and with its one original line.

    A user error re-raised by a DataLoader worker carries the worker's traceback in its message
    ("Caught DataError in DataLoader worker process 0. Original Traceback ..."); the last line is the original.
    Raise the copy outside the ``except`` block: the old traceback then dies at once, and with it the DataLoader
    iterator its frames hold, so the workers shut down now rather than at some later garbage collection.
    """
    text = str(exc)
    if "Original Traceback" in text:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        text = lines[-1] if lines else text
        for head in (f"{type(exc).__module__}.{type(exc).__name__}: ", f"{type(exc).__name__}: "):
            if text.startswith(head):
                text = text[len(head) :]
                break
    return type(exc)(text)


def stop_dataloader_workers(exc: BaseException) -> None:
    """Shut down the DataLoader workers of the iterator an exception was raised through.

    After a failed ``fit`` the iterator survives in a reference cycle of the traceback; when the garbage collector
    later breaks the cycle it may close the iterator's queues before telling the workers to stop, and the
    shutdown then waits 5 s per worker. Stopping them here, while everything is intact, takes milliseconds.
    """
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        stop = getattr(owner, "_shutdown_workers", None)  # torch's multi-process DataLoader iterator
        if callable(stop):
            stop()
        tb = tb.tb_next


# -- the Trainer --------------------------------------------------------------------------------------


def build_trainer(
    cfg: dict,
    run_dir: Path,
    callbacks: list[Callback],
    *,
    checkpoint: ModelCheckpoint | None = None,
    val_every: int | None = None,
    limit_val_batches: int | float | None = None,
) -> L.Trainer:
    """A Lightning Trainer from the ``trainer`` config section (devices, precision, DDP, accumulation).

    ``weights/last.ckpt`` (every epoch) and ``weights/epochNNN.ckpt`` (every ``trainer.save_every``) come from
    :class:`EpochCheckpoints`; ``checkpoint`` is an extra ``ModelCheckpoint`` (e.g. ``best.ckpt``), whose own
    ``save_last`` is switched off so that only one writer owns ``last.ckpt``.
    """
    tcfg = cfg["trainer"]
    accelerator = tcfg["accelerator"]
    precision = resolve_precision(tcfg["precision"], accelerator)
    if precision.startswith("16") and (accelerator == "cpu" or not torch.cuda.is_available()):
        warnings.warn("fp16 mixed precision needs a GPU; using bf16-mixed on CPU", stacklevel=2)
        precision = "bf16-mixed"
    accumulate = tcfg["accumulate"]
    if accumulate < 1:
        raise ConfigError(f"trainer.accumulate={accumulate}: must be >= 1 (batches per optimiser step)")
    checkpoints: list[Callback] = [EpochCheckpoints(run_dir / "weights", tcfg["save_every"] or 0)]
    if checkpoint is not None:
        checkpoint.save_last = False
        checkpoints.append(checkpoint)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    return L.Trainer(
        default_root_dir=run_dir,
        accelerator=accelerator,
        devices=tcfg["devices"],
        num_nodes=tcfg["num_nodes"],
        strategy=tcfg["strategy"],
        precision=precision,
        max_epochs=cfg["epochs"],
        accumulate_grad_batches=accumulate,
        gradient_clip_val=tcfg["clip_grad"],
        logger=TensorBoardLogger(save_dir=run_dir, name="tb", version="", default_hp_metric=False),
        callbacks=[*checkpoints, RunProgressBar(refresh_rate=tcfg["progress_every"]), *callbacks,
                   Preemption(run_dir / "weights" / "last.ckpt")],
        plugins=[AtomicCheckpointIO()],
        log_every_n_steps=tcfg["log_every"],
        check_val_every_n_epoch=val_every or 1,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        limit_train_batches=tcfg["limit_train_batches"],
        limit_val_batches=limit_val_batches,
        deterministic=False,
        use_distributed_sampler=True,
    )
