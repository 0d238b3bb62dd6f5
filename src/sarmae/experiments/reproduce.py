"""``sarmae reproduce``: the paper's full experiment on the real SARDet-100K, one command.

Steps: MAE pre-training with the paper config on the train images, then the Table 1 rows (scratch,
ImageNet when a checkpoint is given, SARDet-100K), each fine-tuned with the paper config and evaluated on val,
then the table. The plan is printed first with GPU-hours estimated from a short measured warm-up. Running the
same command again resumes where it stopped (finished steps are skipped, interrupted ones resume).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sarmae.config import load_config
from sarmae.data.coco import load_coco_json
from sarmae.errors import ConfigError, DataError
from sarmae.experiments.table import Row, row_marker, run_pretrain_step, run_row, write_table
from sarmae.experiments.throughput import detection_speed, pretrain_speed
from sarmae.precision import resolve_precision

PRETRAIN_CONFIG = "mae_vitb16_sardet100k"
FINETUNE_CONFIG = "vitdet_b_sardet100k"


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """``pretrain.KEY=V`` / ``finetune.KEY=V`` -> (pretrain overrides, finetune overrides)."""
    pre, fin = [], []
    for text in overrides:
        head, _, rest = text.partition(".")
        if head == "pretrain" and rest:
            pre.append(rest)
        elif head == "finetune" and rest:
            fin.append(rest)
        else:
            raise ConfigError(f"override '{text}': prefix it with pretrain. or finetune., e.g. pretrain.epochs=10")
    return pre, fin


def estimate_hours(cfg: dict, n_images: int, kind: str, gpus: int, steps: int) -> tuple[float, float]:
    """(measured images/s on one device, estimated hours on ``gpus`` devices) for ``cfg``'s whole schedule."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(cfg["trainer"]["precision"], "gpu" if device.type == "cuda" else "cpu")
    batch = int(cfg["batch_size"]) if device.type == "cuda" else min(2, int(cfg["batch_size"]))
    measure = pretrain_speed if kind == "pretrain" else detection_speed
    speed = measure(cfg["model"], batch, steps, device, precision)
    return speed, int(cfg["epochs"]) * n_images / (speed * max(1, gpus)) / 3600


def run_reproduce(
    data: Path,
    out: Path = Path("runs/reproduce"),
    gpus: int = 1,
    imagenet_weights: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    pretrain_config: str = PRETRAIN_CONFIG,
    finetune_config: str = FINETUNE_CONFIG,
    plan_only: bool = False,
    warmup_steps: int = 3,
) -> dict | None:
    """Print the plan, then run (or resume) every step; returns the per-row metrics."""
    data, out = Path(data), Path(out)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise ConfigError(f"--gpus {gpus}: must be a whole number >= 1 (GPUs per training run)")
    if imagenet_weights is not None and not Path(imagenet_weights).is_file():
        raise ConfigError(f"--imagenet-weights {imagenet_weights}: no such file; pass the official MAE checkpoint "
                          "or leave the ImageNet row out")
    pre_over, fin_over = split_overrides(list(overrides))
    devices = [f"trainer.devices={gpus}"] if torch.cuda.is_available() else []
    pre_over = [f"data.root={data}", *devices, *pre_over]
    fin_over = [*devices, *fin_over]
    from sarmae.train.finetune import finetune_config as complete_finetune
    from sarmae.train.pretrain import pretrain_config as complete_pretrain

    pre_cfg = complete_pretrain(load_config(pretrain_config, pre_over))
    fin_cfg = complete_finetune(load_config(finetune_config, fin_over))
    # The whole plan is checked before anything is measured or written: both splits readable, images to train on.
    n_train = len(load_coco_json(data / "Annotations" / f"{pre_cfg['data']['split']}.json")["images"])
    val = fin_cfg["data"]["val_split"]
    if not load_coco_json(data / "Annotations" / f"{val}.json")["images"]:
        raise DataError(f"{data / 'Annotations' / f'{val}.json'}: no images; the rows are evaluated on this split")
    if n_train == 0:
        raise DataError(f"{data / 'Annotations' / (pre_cfg['data']['split'] + '.json')}: no images to train on")

    rows = [Row("-", "scratch")]
    if imagenet_weights:
        rows.append(Row("ImageNet", "imagenet", Path(imagenet_weights)))
    rows.append(Row("SARDet-100k", "sar", out / "pretrain" / "encoder.safetensors"))

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (no GPU: expect a very long run)"
    print(f"sarmae reproduce: {data} ({n_train} training images) -> {out}; measuring on {device} ...")
    speed_pre, hours_pre = estimate_hours(pre_cfg, n_train, "pretrain", gpus, warmup_steps)
    speed_fin, hours_fin = estimate_hours(fin_cfg, n_train, "finetune", gpus, warmup_steps)
    done = lambda path: " (done)" if path.is_file() else ""  # noqa: E731
    lines = [f"1. MAE pre-training: {pretrain_config}, {pre_cfg['epochs']} epochs, "
             f"{speed_pre:.1f} img/s/device -> ~{hours_pre:.2f} h on {gpus} device(s)"
             f"{done(out / 'pretrain' / 'encoder.safetensors')}"]
    for i, row in enumerate(rows, start=2):
        marker = row_marker(out / f"finetune_{row.init}")
        lines.append(f"{i}. fine-tune + evaluate row '{row.label}' (init={row.init}): {finetune_config}, "
                     f"{fin_cfg['epochs']} epochs, {speed_fin:.1f} img/s/device -> ~{hours_fin:.2f} h{done(marker)}")
    total = hours_pre + hours_fin * len(rows)
    lines.append(f"{len(rows) + 2}. the table -> {out / 'table.md'}   (total ~{total:.1f} h, "
                 f"{total * max(1, gpus):.0f} GPU-hours; data loading not included)")
    plan = "\n".join(lines)
    print(plan)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.txt").write_text(plan + "\n")
    if plan_only:
        return None

    run_pretrain_step(pretrain_config, pre_over, out / "pretrain")
    per_row = {
        row.label: [run_row(row, fin_cfg["seed"], finetune_config, fin_over, data,
                            out / f"finetune_{row.init}")]
        for row in rows
    }
    write_table(per_row, out, f"Table 1 reproduction on {data} (val split)")
    (out / "rows.json").write_text(json.dumps({k: v[0] for k, v in per_row.items()}, indent=2, default=str))
    return per_row
