"""``sarmae demo``: the paper's Table 1 in miniature, end to end on the embedded synthetic SAR benchmark.

1. generate (once, cached) a SARDet-100K-layout synthetic dataset with a large unlabeled pool;
2. MAE pre-training of a tiny ViT on the unlabeled pool;
3. ViTDet fine-tuning on the small labeled split from scratch and from the SAR-MAE encoder (plus an ImageNet
   row when a checkpoint is given), identical budgets and seeds;
4. COCO evaluation of each on val, the table, the reconstruction figure (Figure 2) and a detection figure
   (Figure 3) in the run folder.

On a CPU the fine-tuning runs go side by side, one process each with an equal share of the cores: a tiny
model uses one core far better than two, so two rows at once finish ~1.5x sooner than one after the other. Each
run logs to its own ``log.txt``; the demo shows one progress bar over all epochs.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from tqdm import tqdm

from sarmae.config import load_config
from sarmae.data.synth import write_dataset
from sarmae.experiments.table import Row, row_marker, run_pretrain_step, run_row, write_table


def cache_dir() -> Path:
    return Path(os.environ.get("SARMAE_CACHE", Path.home() / ".cache" / "sarmae"))


def demo_dataset(spec: dict) -> Path:
    """The synthetic benchmark for ``spec`` (size, counts, seed), generated on first use and then reused."""
    keys = ("size", "train", "val", "test", "unlabeled", "seed")
    root = cache_dir() / ("synth_" + "_".join(f"{k}{spec[k]}" for k in keys))
    print(str(write_dataset(root, **{k: int(spec[k]) for k in keys})))
    return root


def run_demo(
    out: Path = Path("runs/demo"),
    seeds: int = 1,
    imagenet_weights: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> dict:
    """Run the whole demo; ``overrides`` are ``demo.yaml`` keys, e.g. ``pretrain.overrides=[epochs=1]``."""
    start = time.perf_counter()
    plan = load_config("demo/demo.yaml", list(overrides))
    out = Path(out)
    root = demo_dataset(plan["data"])

    pre = plan["pretrain"]
    pre_overrides = [f"data.images={root / 'Unlabeled'}", *pre.get("overrides", [])]
    encoder = run_pretrain_step(pre["config"], pre_overrides, out / "pretrain")

    rows = [Row("- (scratch)", "scratch"), Row("SAR (synthetic, MAE)", "sar", encoder)]
    if imagenet_weights:
        rows.insert(1, Row("ImageNet (MAE)", "imagenet", Path(imagenet_weights)))
    fin = plan["finetune"]
    jobs = [(row, seed, fin["config"], list(fin.get("overrides", [])), root, out / f"finetune_{row.init}_seed{seed}")
            for seed in range(seeds) for row in rows]
    todo = [job for job in jobs if not row_marker(job[-1]).is_file()]  # finished runs are read, not re-run
    ran = dict(zip((job[-1] for job in todo), run_side_by_side(todo))) if side_by_side_ok(todo) else {}
    per_row: dict[str, list[dict]] = {row.label: [] for row in rows}
    for job in jobs:
        per_row[job[0].label].append(ran[job[-1]] if job[-1] in ran else run_row(*job))

    _collect_figures(out, rows, root)
    minutes = (time.perf_counter() - start) / 60
    title = (f"sarmae demo: synthetic SAR benchmark, val split, {seeds} seed(s), "
             f"{plan['data']['train']} labeled / {plan['data']['unlabeled']} unlabeled images ({minutes:.1f} min)")
    write_table(per_row, out, title)
    return per_row


def side_by_side_ok(jobs: list[tuple]) -> bool:
    """Several runs, several cores and no GPU (on a GPU the runs would only compete for the device)."""
    import torch

    return len(jobs) > 1 and (os.cpu_count() or 1) > 1 and not torch.cuda.is_available()


def _row_in_subprocess(job: tuple, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    out = Path(job[-1])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.txt", "a", buffering=1) as log, redirect_stdout(log), redirect_stderr(log):
        return run_row(*job)


_PROGRESS = re.compile(rb"Epoch (\d+):\s+\d+%\|[^|]*\| (\d+)/(\d+)")


def _epochs_done(log: Path) -> float:
    """Epochs a run has trained, from the last progress-bar line in its log (fractions within an epoch)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            matches = _PROGRESS.findall(f.read())
    except OSError:
        return 0.0
    if not matches:
        return 0.0
    epoch, step, steps = (int(v) for v in matches[-1])
    return epoch + step / max(1, steps)


def run_side_by_side(jobs: list[tuple]) -> list[dict]:
    """:func:`run_row` for every job, as many at once as there are cores (at least one core each)."""
    workers = min(len(jobs), os.cpu_count() or 1)
    threads = max(1, (os.cpu_count() or 1) // workers)
    epochs = [int(load_config(job[2], job[3]).get("epochs", 1)) for job in jobs]
    print(f"fine-tuning {len(jobs)} runs, {workers} at a time ({threads} thread(s) each); logs: "
          + ", ".join(str(Path(job[-1]) / "log.txt") for job in jobs))
    bar = tqdm(total=sum(epochs), desc="fine-tuning", file=sys.stderr, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n:.1f}/{total} epochs [{elapsed}<{remaining}]")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(_row_in_subprocess, job, threads) for job in jobs]
        while True:
            finished, pending = wait(futures, timeout=5, return_when=FIRST_EXCEPTION)
            done = sum(e if f in finished else min(e, _epochs_done(Path(job[-1]) / "log.txt"))
                       for f, e, job in zip(futures, epochs, jobs))
            bar.update(round(done - bar.n, 2))
            if not pending or any(f.exception() for f in finished):
                break
        bar.close()
        return [f.result() for f in futures]  # re-raises a run's error once the others have finished


def _collect_figures(out: Path, rows: list[Row], root: Path) -> None:
    """Figure 2 (reconstructions of val images) from the pre-training run, Figure 3 (detections) from the last row."""
    from sarmae.infer.reconstruct import reconstruct

    ckpt = out / "pretrain" / "weights" / "last.ckpt"
    if ckpt.is_file():
        reconstruct(ckpt, [str(root / "JPEGImages" / "val")], out / "figure2_reconstruction.png", count=4)
    samples = out / f"finetune_{rows[-1].init}_seed0" / "eval" / "samples.png"
    if samples.is_file():
        shutil.copyfile(samples, out / "figure3_detections.png")
