"""``sarmae demo``: the paper's Table 1 in miniature, end to end on the embedded synthetic SAR benchmark.

1. generate (once, cached) a SARDet-100K-layout synthetic dataset with a large unlabeled pool, rendered at the
   zoom that SARDet-100K chips get at the detector's input, and a pool of natural-photograph crops of the same
   size (the stand-in for ImageNet);
2. three MAE pre-trainings of the same tiny ViT with the same budget: natural images (pixel target), SAR
   (pixel target, the paper's) and SAR (gradient target);
3. ViTDet fine-tuning of every row (scratch, natural, SAR pixels, SAR gradients, plus ImageNet when a checkpoint
   is given) with one recipe fixed in advance, for several seeds; val mAP after every few epochs (learning curves);
4. COCO evaluation of each last checkpoint on val, the table with paired per-seed differences to scratch,
   frozen-feature probes of the encoders, Figure 2 (reconstructions), Figure 3 (detections), the learning curves.

Pre-training and the scratch rows start side by side; each pre-trained row starts when its encoder is ready
(:mod:`sarmae.experiments.jobs`). Every step is resumable: run the same command again after an interruption.
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from pathlib import Path

from sarmae.config import check_keys, config_schema, load_config
from sarmae.data.natural import write_natural_pool
from sarmae.data.synth import write_dataset
from sarmae.errors import ConfigError
from sarmae.experiments.jobs import Job, run_jobs
from sarmae.experiments.table import Row, run_pretrain_step, run_row, write_table

PROFILES = {"cpu": "demo/demo.yaml", "gpu": "demo/demo_gpu.yaml"}
SCRATCH = "- (scratch)"


def cache_dir() -> Path:
    return Path(os.environ.get("SARMAE_CACHE", Path.home() / ".cache" / "sarmae"))


def demo_dataset(spec: dict) -> Path:
    """The synthetic benchmark for ``spec`` (size, zoom, counts, seed), generated on first use and then reused."""
    keys = ("size", "zoom", "train", "val", "test", "unlabeled", "seed")
    root = cache_dir() / ("synth_" + "_".join(f"{k}{spec[k]}" for k in keys))
    params = {k: int(spec[k]) for k in keys if k != "zoom"}
    print(str(write_dataset(root, zoom=float(spec["zoom"]), **params)))
    return root


def natural_pool(spec: dict) -> Path:
    """Crops of natural photographs, as many and as large as the SAR pool, generated on first use."""
    count, size, seed = int(spec["unlabeled"]), int(spec["size"]), int(spec["seed"])
    return write_natural_pool(cache_dir() / f"natural_{count}_{size}_{seed}", count, size, seed)


def demo_plan(profile: str, overrides: list[str] | tuple[str, ...]) -> dict:
    if profile not in PROFILES:
        raise ConfigError(f"--profile {profile}: use one of {', '.join(PROFILES)}")
    plan = load_config(PROFILES[profile], list(overrides))
    check_keys(plan, config_schema(PROFILES["cpu"]))  # the CPU plan lists every key; a typo is an error
    return plan


def run_demo(
    out: Path = Path("runs/demo"),
    seeds: int | None = None,
    imagenet_weights: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    profile: str = "cpu",
) -> dict:
    """Run the whole demo; ``overrides`` are ``demo.yaml`` keys, e.g. ``pretrain.overrides=[epochs=1]``."""
    start = time.perf_counter()
    plan = demo_plan(profile, overrides)
    seeds = int(plan["seeds"] if seeds is None else seeds)
    if seeds < 1:
        raise ConfigError(f"seeds={seeds}: need at least one seed")
    out = Path(out)
    root = demo_dataset(plan["data"])
    pools = {"natural": natural_pool(plan["data"]), "sar": root / "Unlabeled"}

    pre, fin = plan["pretrain"], plan["finetune"]
    from sarmae.train.finetune import finetune_config
    from sarmae.train.pretrain import pretrain_config

    pre_epochs = pretrain_config(load_config(pre["config"], list(pre["overrides"])))["epochs"]
    fin_epochs = finetune_config(load_config(fin["config"], list(fin["overrides"])))["epochs"]
    encoders: dict[str, Path] = {}
    jobs: list[Job] = []
    for name, pool, target in (("natural", "natural", "pixels"), ("sar_pixels", "sar", "pixels"),
                               ("sar_gradients", "sar", "gradients")):
        run = out / f"pretrain_{name}"
        encoders[name] = run / "encoder.safetensors"
        jobs.append(Job(run_pretrain_step, {"config": pre["config"], "out": run, "overrides": [
            f"data.images={pools[pool]}", f"model.target={target}", *pre["overrides"]]}, run, epochs=pre_epochs))

    rows = [Row(SCRATCH, "scratch"), Row("natural images (MAE)", "sar", encoders["natural"], "natural"),
            Row("SAR (MAE, pixel target)", "sar", encoders["sar_pixels"], "sar_pixels"),
            Row("SAR (MAE, gradient target)", "sar", encoders["sar_gradients"], "sar_gradients")]
    if imagenet_weights:
        rows.insert(1, Row("ImageNet (MAE)", "imagenet", Path(imagenet_weights)))
    row_jobs: dict[str, list[Job]] = {row.label: [] for row in rows}
    for seed in range(seeds):
        for row in rows:
            run = out / f"finetune_{row.tag}_seed{seed}"
            needs = (row.weights.parent,) if row.weights in encoders.values() else ()
            job = Job(run_row, {"row": row, "seed": seed, "config": fin["config"], "overrides": list(fin["overrides"]),
                                "data_root": root, "out": run}, run, needs, epochs=fin_epochs)
            row_jobs[row.label].append(job)
            jobs.append(job)
    if plan["probe"]:
        from sarmae.experiments.probe import run_probe

        labels = {str(row.weights): row.label for row in rows if row.weights in encoders.values()}
        # probe.md / probe.json go beside table.md; the step's folder only holds its log
        jobs.append(Job(run_probe, {"encoders": list(encoders.values()), "data_root": root, "out": out,
                                    "labels": labels}, out / "probe", tuple(e.parent for e in encoders.values())))
    # scratch rows wait for nothing: list them right after the pre-trainings so both fill the cores first
    jobs.sort(key=lambda job: len(job.needs) > 0)
    run_jobs(jobs)

    per_row = {label: [job.result for job in js] for label, js in row_jobs.items()}
    _collect_figures(out, row_jobs, root)
    minutes = (time.perf_counter() - start) / 60
    title = (f"sarmae demo: synthetic SAR benchmark, val split, {seeds} seed(s), "
             f"{plan['data']['train']} labeled / {plan['data']['unlabeled']} unlabeled images ({minutes:.1f} min)")
    write_table(per_row, out, title, baseline=SCRATCH)
    if plan["probe"]:
        print((out / "probe.md").read_text())
    return per_row


def _collect_figures(out: Path, row_jobs: dict[str, list[Job]], root: Path) -> None:
    """Figure 2 from the SAR pixel-target pre-training (the paper's; a gradient-target MAE predicts no pixels),
    Figure 3 from the SAR pixel-target row's first seed (the paper's SAR row), the learning curves."""
    from sarmae.infer.reconstruct import reconstruct

    ckpt = out / "pretrain_sar_pixels" / "weights" / "last.ckpt"
    if ckpt.is_file():
        reconstruct(ckpt, [str(root / "JPEGImages" / "val")], out / "figure2_reconstruction.png", count=4)
    samples = out / "finetune_sar_pixels_seed0" / "eval" / "samples.png"
    if samples.is_file():
        shutil.copyfile(samples, out / "figure3_detections.png")
    plot_learning_curves({label: [job.out for job in js] for label, js in row_jobs.items()},
                         out / "learning_curves.png")


def read_curve(run: Path) -> tuple[list[int], list[float]]:
    """(epochs, val mAP in %) from a fine-tuning run's ``metrics.csv`` (rows with a validation)."""
    epochs, values = [], []
    with open(run / "metrics.csv", newline="") as f:
        for record in csv.DictReader(f):
            if record.get("val_mAP") not in (None, "", "nan"):
                epochs.append(int(float(record["epoch"])) + 1)
                values.append(100 * float(record["val_mAP"]))
    return epochs, values


def plot_learning_curves(runs: dict[str, list[Path]], path: Path) -> None:
    """Val mAP vs epoch, one colour per row, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, folders) in enumerate(runs.items()):
        for seed, folder in enumerate(folders):
            epochs, values = read_curve(folder)
            ax.plot(epochs, values, color=f"C{i}", marker="o", ms=3, alpha=0.8, label=label if seed == 0 else None)
    ax.set_xlabel("fine-tuning epoch")
    ax.set_ylabel("val mAP (%)")
    ax.set_title("Learning curves (one line per seed)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
