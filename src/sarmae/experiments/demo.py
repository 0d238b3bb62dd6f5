"""``sarmae demo``: the paper's Table 1 in miniature, end to end on the embedded synthetic SAR benchmark.

1. generate (once, cached) a SARDet-100K-layout synthetic dataset, rendered at the zoom that SARDet-100K chips get
   at the detector's input;
2. take the MAE encoders: by default the ones shipped in the package (``sarmae/weights/``), pre-trained once on
   the demo's own unlabeled pools as the paper's workflow pre-trains once and fine-tunes many times;
   ``encoders=pretrain`` makes them again in the run (natural-image pool and SAR pool, pixel target; the SAR
   gradient target when its row is asked for) and writes their provenance records;
3. ViTDet fine-tuning of every row (scratch, natural images, SAR pixels; SAR gradients and ImageNet on request)
   with one recipe fixed in advance, for several seeds; val mAP every few epochs (learning curves);
4. COCO evaluation of each last checkpoint on val, the table with paired per-seed differences (95 % intervals),
   frozen-feature probes of the encoders, Figure 2 (reconstructions, when the MAE was trained in the run),
   Figure 3 (detections), the learning curves.

Every step is resumable: run the same command again after an interruption.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
from importlib.resources import files
from pathlib import Path

from sarmae.config import check_keys, config_schema, load_config
from sarmae.data.natural import MANIFEST as NATURAL_MANIFEST
from sarmae.data.natural import write_natural_pool
from sarmae.data.synth import MANIFEST as SYNTH_MANIFEST
from sarmae.data.synth import write_dataset
from sarmae.errors import ConfigError
from sarmae.experiments.jobs import Job, run_jobs
from sarmae.experiments.table import Row, run_pretrain_step, run_row, write_table
from sarmae.files import atomic_open, writing

PROFILES = {"cpu": "demo/demo.yaml", "gpu": "demo/demo_gpu.yaml"}
SCRATCH = "- (scratch)"
# pre-trained rows: name -> (table label, unlabeled pool, MAE target)
ENCODER_ROWS = {
    "natural": ("natural images (MAE)", "natural", "pixels"),
    "sar_pixels": ("SAR (MAE, pixel target)", "sar", "pixels"),
    "sar_gradients": ("SAR (MAE, gradient target)", "sar", "gradients"),
}
ENCODER_MODES = ("shipped", "pretrain")
PROVENANCE = "provenance.json"


def cache_dir() -> Path:
    return Path(os.environ.get("SARMAE_CACHE", Path.home() / ".cache" / "sarmae"))


def shipped_encoder(name: str) -> Path:
    """Where the package keeps the demo's encoder ``name`` (``<name>.json`` beside it: its provenance)."""
    return Path(str(files("sarmae") / "weights" / f"demo_{name}.safetensors"))


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
    """The demo's plan (``demo.yaml`` + overrides), checked whole before any data is generated or step started."""
    if profile not in PROFILES:
        raise ConfigError(f"--profile {profile}: use one of {', '.join(PROFILES)}")
    plan = load_config(PROFILES[profile], list(overrides))
    check_keys(plan, config_schema(PROFILES["cpu"]))  # the CPU plan lists every key; a typo is an error
    rows = plan["rows"]
    unknown = [r for r in rows if r not in ENCODER_ROWS]
    if unknown or len(set(rows)) != len(rows):
        raise ConfigError(f"rows={rows}: list each of {', '.join(ENCODER_ROWS)} at most once (scratch is always run)")
    if plan["encoders"] not in ENCODER_MODES:
        raise ConfigError(f"encoders={plan['encoders']}: use shipped (the package's) or pretrain (make them here)")
    data = plan["data"]
    for key, least in (("train", 1), ("val", 1), ("size", 16), ("unlabeled", 1), ("seed", 0)):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"data.{key}={value!r}: must be a whole number >= {least}")
    if data["size"] % 16:
        raise ConfigError(f"data.size={data['size']}: must be a multiple of the ViT's 16-px patch")
    return plan


def run_demo(
    out: Path = Path("runs/demo"),
    seeds: int | None = None,
    imagenet_weights: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    profile: str = "cpu",
) -> dict:
    """Run the whole demo; ``overrides`` are ``demo.yaml`` keys, e.g. ``rows=[natural,sar_pixels,sar_gradients]``."""
    start = time.perf_counter()
    plan = demo_plan(profile, overrides)
    seeds = int(plan["seeds"] if seeds is None else seeds)
    if seeds < 1:
        raise ConfigError(f"seeds={seeds}: need at least one seed")
    out = Path(out)
    pre, fin = plan["pretrain"], plan["finetune"]
    from sarmae.train.finetune import finetune_config
    from sarmae.train.pretrain import pretrain_config

    pre_epochs = pretrain_config(load_config(pre["config"], list(pre["overrides"])))["epochs"]
    fin_cfg = finetune_config(load_config(fin["config"], list(fin["overrides"])))
    encoders: dict[str, Path] = {}
    for name in plan["rows"]:
        why_not = shipped_mismatch(name, plan) if plan["encoders"] == "shipped" else "encoders=pretrain"
        if why_not is None:
            encoders[name] = shipped_encoder(name)
        else:
            print(f"{ENCODER_ROWS[name][0]}: pre-training in this run ({why_not})")
    missing = [name for name in plan["rows"] if name not in encoders]
    root = demo_dataset(plan["data"])
    jobs: list[Job] = []
    for name in missing:
        _, pool, target = ENCODER_ROWS[name]
        run = out / f"pretrain_{name}"
        encoders[name] = run / "encoder.safetensors"
        images = natural_pool(plan["data"]) if pool == "natural" else root / "Unlabeled"
        jobs.append(Job(pretrain_encoder, {"config": pre["config"], "out": run, "images": images,
                                           "overrides": [f"model.target={target}", *pre["overrides"]]},
                        run, epochs=pre_epochs, kind="pretrain"))
    for name in [n for n in encoders if n not in missing]:
        print(f"{ENCODER_ROWS[name][0]}: the MAE encoder shipped with sarmae ({encoders[name]})")

    rows = [Row(SCRATCH, "scratch")] + [Row(ENCODER_ROWS[n][0], "sar", encoders[n], n) for n in plan["rows"]]
    if imagenet_weights:
        rows.insert(1, Row("ImageNet (MAE)", "imagenet", Path(imagenet_weights)))
    trained_here = {encoders[n].parent for n in missing}
    row_jobs: dict[str, list[Job]] = {row.label: [] for row in rows}
    for seed in range(seeds):
        for row in rows:
            run = out / f"finetune_{row.tag}_seed{seed}"
            needs = (row.weights.parent,) if row.weights is not None and row.weights.parent in trained_here else ()
            job = Job(run_row, {"row": row, "seed": seed, "config": fin["config"], "overrides": list(fin["overrides"]),
                                "data_root": root, "out": run}, run, needs, epochs=fin_cfg["epochs"], kind="finetune")
            row_jobs[row.label].append(job)
            jobs.append(job)
    if plan["probe"] and encoders:
        from sarmae.experiments.probe import run_probe

        labels = {str(encoders[n]): ENCODER_ROWS[n][0] for n in encoders}
        # probe.md / probe.json go beside table.md; the step's folder only holds its log
        jobs.append(Job(run_probe, {"encoders": list(encoders.values()), "data_root": root, "out": out,
                                    "labels": labels}, out / "probe", tuple(trained_here)))
    # steps that wait for nothing first, so that the cores fill at once
    jobs.sort(key=lambda job: len(job.needs) > 0)
    run_jobs(jobs)

    per_row = {label: [job.result for job in js] for label, js in row_jobs.items()}
    _collect_figures(out, row_jobs, root)
    minutes = (time.perf_counter() - start) / 60
    title = (f"sarmae demo: synthetic SAR benchmark, val split, {seeds} seed(s), {plan['data']['train']} labeled "
             f"images, precision {fin_cfg['trainer']['precision']} ({minutes:.1f} min)")
    labels = [row.label for row in rows]
    comparisons = [(label, SCRATCH) for label in labels[1:]]
    sar, natural = ENCODER_ROWS["sar_pixels"][0], ENCODER_ROWS["natural"][0]
    comparisons += [(sar, natural)] + [(sar, "ImageNet (MAE)")] * bool(imagenet_weights)
    write_table(per_row, out, title, comparisons)
    if plan["probe"] and encoders:
        print((out / "probe.md").read_text())
    return per_row


def shipped_mismatch(name: str, plan: dict) -> str | None:
    """None when the package's encoder ``name`` is what ``plan`` would pre-train (same pretrain config and
    overrides, same pool: generator, version and parameters); else why it is not."""
    from sarmae.data.natural import VERSION as NATURAL_VERSION
    from sarmae.data.synth import GENERATOR_VERSION

    path = shipped_encoder(name)
    record_path = path.with_suffix(".json")
    if not path.is_file() or not record_path.is_file():
        return "no shipped encoder"
    record = json.loads(record_path.read_text())
    _, pool, target = ENCODER_ROWS[name]
    overrides = [f"model.target={target}", *plan["pretrain"]["overrides"]]
    if record["config_name"] != plan["pretrain"]["config"] or record["overrides"] != overrides:
        return f"the shipped one was made by {record['command']}"
    data, made = plan["data"], (record["data"]["manifest"] or {})
    if pool == "sar":
        want = {k: data[k] for k in ("size", "unlabeled", "seed")} | {"zoom": float(data["zoom"])}
        have = {k: (made.get("params") or {}).get(k) for k in want}
        version, current = made.get("version"), GENERATOR_VERSION
    else:
        want = {"count": data["unlabeled"], "size": data["size"], "seed": data["seed"]}
        have = {k: made.get(k) for k in want}
        version, current = made.get("version"), NATURAL_VERSION
    if have != want or version != current:
        return f"the shipped one was pre-trained on {have} (generator version {version}), this plan uses {want}"
    return None


def pretrain_encoder(config: str, overrides: list[str], out: Path, images: Path) -> Path:
    """One demo MAE pre-training (:func:`run_pretrain_step` on ``images``), then its provenance record."""
    began = time.perf_counter()
    encoder = run_pretrain_step(config, [f"data.images={images}", *overrides], out)
    if not (out / PROVENANCE).is_file():
        write_provenance(out, config, overrides, images, time.perf_counter() - began)
    return encoder


def pool_identity(images: Path) -> dict:
    """What an unlabeled pool is: its generator's manifest (name, version, parameters), the number of images and
    a SHA-256 over their names and bytes in sorted order."""
    images = Path(images)
    manifest = next((m for m in (images / NATURAL_MANIFEST, images.parent / SYNTH_MANIFEST) if m.is_file()), None)
    digest, count = hashlib.sha256(), 0
    for path in sorted(p for p in images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".tif")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
        count += 1
    return {"manifest": json.loads(manifest.read_text()) if manifest else None, "images": count,
            "sha256": digest.hexdigest()}


def machine() -> dict:
    """The machine a result came from: CPU model, the instruction sets that decide its precision, threads."""
    import torch

    from sarmae.precision import cpu_features

    model = platform.processor()
    with contextlib.suppress(OSError):
        model = next((line.partition(":")[2].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.partition(":")[0].strip() == "model name"), model)
    return {"cpu": model, "features": cpu_features(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def code_version() -> dict:
    from sarmae import __version__

    try:
        here = Path(__file__).parent
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=here, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"sarmae": __version__, "git": commit}


def write_provenance(run: Path, config: str, overrides: list[str], images: Path, seconds: float) -> Path:
    """``run/provenance.json``: how the run's encoder was made (command, effective config, data identity, code
    version, duration, machine) and the encoder file's SHA-256. The shipped encoders carry this record, and the
    suite checks it against the shipped configs and the generators' versions."""
    import yaml

    encoder = run / "encoder.safetensors"
    record = {
        "command": f"sarmae pretrain {config} data.images=<{Path(images).name}> " + " ".join(overrides),
        "config_name": config,
        "overrides": list(overrides),
        "config": yaml.safe_load((run / "config.yaml").read_text()),
        "data": pool_identity(images),
        "code": code_version(),
        "seconds": round(seconds, 1),
        "machine": machine(),
        "encoder_sha256": hashlib.sha256(encoder.read_bytes()).hexdigest(),
    }
    path = run / PROVENANCE
    with atomic_open(path, "w") as f:
        f.write(json.dumps(record, indent=2) + "\n")
    return path


def _collect_figures(out: Path, row_jobs: dict[str, list[Job]], root: Path) -> None:
    """Figure 2 from the SAR pixel-target pre-training when it ran here (the shipped encoders carry no decoder;
    a gradient-target MAE predicts no pixels), Figure 3 from the SAR pixel-target row's first seed (the paper's
    SAR row), the learning curves."""
    from sarmae.infer.reconstruct import reconstruct

    ckpt = out / "pretrain_sar_pixels" / "weights" / "last.ckpt"
    if ckpt.is_file():
        reconstruct(ckpt, [str(root / "JPEGImages" / "val")], out / "figure2_reconstruction.png", count=4)
    else:
        print("Figure 2 (MAE reconstructions) needs the MAE's decoder, which the shipped encoders do not carry: "
              "run with encoders=pretrain, or `sarmae reconstruct RUN/weights/last.ckpt IMAGES` on any MAE run")
    samples = out / "finetune_sar_pixels_seed0" / "eval" / "samples.png"
    if samples.is_file():
        shutil.copyfile(samples, out / "figure3_detections.png")
    plot_learning_curves({label: [job.out for job in js] for label, js in row_jobs.items()},
                         out / "learning_curves.png")


def read_curve(run: Path) -> tuple[list[int], list[float]]:
    """(epochs, val mAP in %) from a fine-tuning run's ``metrics.csv`` (rows with a validation), ending with the
    evaluation of its last checkpoint (``eval/metrics.json``) when training did not validate its last epoch."""
    import yaml

    epochs, values = [], []
    last = int(yaml.safe_load((run / "config.yaml").read_text())["epochs"])
    with open(run / "metrics.csv", newline="") as f:
        for record in csv.DictReader(f):
            if record.get("val_mAP") not in (None, "", "nan"):
                epochs.append(int(float(record["epoch"])) + 1)
                values.append(100 * float(record["val_mAP"]))
    final = run / "eval" / "metrics.json"
    if final.is_file() and (not epochs or epochs[-1] < last):
        epochs.append(last)
        values.append(100 * float(json.loads(final.read_text())["mAP"]))
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
    with writing(path):
        fig.savefig(path, dpi=110)
    plt.close(fig)
