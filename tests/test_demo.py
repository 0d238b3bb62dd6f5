"""``sarmae demo`` and ``sarmae reproduce`` wiring with tiny budgets: every step runs, the table and figures land
in the run folder, and a reproduction stopped halfway resumes where it stopped when the command is run again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

import sarmae.experiments.reproduce as reproduce
from sarmae.cli import main
from sarmae.data.synth import write_dataset

TINY_DETECTOR = [
    "model.embed_dim=64", "model.depth=2", "model.num_heads=2", "model.window_size=4", "model.global_blocks=[1]",
    "model.fpn_channels=32", "model.img_size=64", "epochs=1", "batch_size=4", "eval.every=1", "data.workers=0",
]
TINY_MAE = ["model.embed_dim=64", "model.depth=2", "model.num_heads=2", "model.img_size=64", "epochs=1",
            "batch_size=8", "data.workers=0"]


ROWS = {"- (scratch)", "natural images (MAE)", "SAR (MAE, pixel target)", "SAR (MAE, gradient target)"}


def test_demo_runs_every_step_and_writes_tables_and_figures(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SARMAE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    overrides = ["data.train=12", "data.val=6", "data.unlabeled=16", "data.size=64",
                 "rows=[natural,sar_pixels,sar_gradients]",
                 f"pretrain.overrides={TINY_MAE}",
                 f"finetune.overrides={['model.pretrain_img_size=64', *TINY_DETECTOR]}"]
    assert main(["demo", "--out", str(out), "--seeds", "2", *overrides]) == 0
    printed = capsys.readouterr().out
    table = (out / "table.md").read_text()
    assert all(label in table for label in ROWS) and "| Δ mAP (points)" in table and "95 % CI" in table
    assert "12 labeled images, precision " in table and table.split("\n\n", 1)[1].strip() in printed
    assert "pre-training in this run (the shipped one was" in printed  # tiny MAEs: not what the package ships
    rows = json.loads((out / "table.json").read_text())
    assert set(rows) == ROWS
    for label, row in rows.items():
        assert len(row["runs"]) == 2 and set(row["summary"]) == {"mAP", "AP50", "AP75", "mAP_s", "mAP_m", "mAP_l"}
        if label == "- (scratch)":
            assert "paired" not in row
            continue
        references = {"- (scratch)", "natural images (MAE)"} if label == "SAR (MAE, pixel target)" else \
            {"- (scratch)"}  # SAR pixels is also paired with natural images (the paper's second claim)
        assert set(row["paired"]) == references
        for reference in references:
            paired = row["paired"][reference]
            for column in ("mAP", "AP50"):  # per seed: this row's run minus the reference run of the same seed
                expected = [r[column] - s[column] for r, s in zip(row["runs"], rows[reference]["runs"])]
                assert paired[column]["per_seed"] == pytest.approx(expected)
                assert paired[column]["ahead"] == sum(d > 0 for d in expected)
                low, high = paired[column]["ci95"]
                assert low <= paired[column]["mean"] <= high
    # one recipe: every fine-tuning run has the same config apart from its init, weights, seed and folder
    configs = {path.parent.name: yaml.safe_load(path.read_text()) for path in out.glob("finetune_*/config.yaml")}
    assert len(configs) == 8
    for name, cfg in configs.items():
        assert cfg.pop("seed") == int(name[-1]) and cfg.pop("init") == ("scratch" if "scratch" in name else "sar")
        assert cfg.pop("out").endswith(name)
        weights = cfg.pop("weights")
        assert weights is None if "scratch" in name else weights.endswith(".safetensors")
    assert all(cfg == configs["finetune_scratch_seed0"] for cfg in configs.values())
    # one pre-training budget: the three runs differ only in their images and their target
    pre = {path.parent.name: yaml.safe_load(path.read_text()) for path in out.glob("pretrain_*/config.yaml")}
    assert {p["model"].pop("target") for p in pre.values()} == {"pixels", "gradients"}
    assert Path(pre["pretrain_natural"]["data"].pop("images")).name.startswith("natural_")
    for p in pre.values():
        p.pop("out"), p["data"].pop("images", None)
    assert pre["pretrain_natural"] == pre["pretrain_sar_pixels"] == pre["pretrain_sar_gradients"]
    # probes of the three encoders and random init, printed beside the table
    probe = json.loads((out / "probe.json").read_text())
    assert set(probe["encoders"]) == (ROWS - {"- (scratch)"}) | {"random init"}  # labelled like the table
    assert "objectness AP" in printed
    for figure in ("figure2_reconstruction.png", "figure3_detections.png", "learning_curves.png"):
        assert (out / figure).stat().st_size > 0
    logs = sorted(out.glob("*/log.txt"))
    if os.cpu_count() > 1:  # the steps ran side by side, each logging to its own file
        assert "2 at a time" in printed and len(logs) == 12
    assert "init=sar from" in printed + "".join(log.read_text() for log in logs)
    # the datasets are cached: a second demo into another folder does not generate them again
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 2 and cached[0].startswith("natural_") and cached[1].startswith("synth_")


@pytest.fixture()
def tiny_dataset(tmp_path) -> Path:
    root = tmp_path / "data"
    write_dataset(root, train=8, val=4, test=0, unlabeled=0, size=64, seed=1)
    return root


def reproduce_args(root: Path, out: Path) -> list[str]:
    return ["reproduce", "--data", str(root), "--out", str(out), "--pretrain-config", "mae_tiny",
            "--finetune-config", "vitdet_tiny", *(f"pretrain.{o}" for o in TINY_MAE),
            *(f"finetune.{o}" for o in TINY_DETECTOR)]


def test_reproduce_prints_the_plan_and_resumes_where_it_stopped(tiny_dataset, tmp_path, monkeypatch, capsys):
    out = tmp_path / "repro"
    real_run_row = reproduce.run_row
    calls: list[str] = []

    def stop_at_the_second_row(row, *args, **kwargs):
        calls.append(row.init)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user stops the run (or the job is pre-empted) during the second row
        return real_run_row(row, *args, **kwargs)

    monkeypatch.setattr(reproduce, "run_row", stop_at_the_second_row)
    assert main(reproduce_args(tiny_dataset, out)) == 130
    first, err = capsys.readouterr()
    assert "run the same command again to resume" in err
    assert "1. MAE pre-training: mae_tiny" in first and "GPU-hours" in first and (out / "plan.txt").is_file()
    encoder = out / "pretrain" / "encoder.safetensors"
    scratch = out / "finetune_scratch" / "eval" / "metrics.json"
    assert encoder.is_file() and scratch.is_file() and not (out / "table.md").exists()
    stamps = encoder.stat().st_mtime_ns, scratch.stat().st_mtime_ns

    monkeypatch.setattr(reproduce, "run_row", real_run_row)
    assert main(reproduce_args(tiny_dataset, out)) == 0
    second = capsys.readouterr().out
    assert "(done)" in second  # the plan marks finished steps
    assert "pre-training: done earlier" in second and "- (seed 0): done earlier" in second
    assert (encoder.stat().st_mtime_ns, scratch.stat().st_mtime_ns) == stamps  # finished steps were not re-run
    assert (out / "finetune_sar" / "eval" / "metrics.json").is_file()
    assert "SARDet-100k" in (out / "table.md").read_text()
    assert set(json.loads((out / "table.json").read_text())) == {"-", "SARDet-100k"}


def test_the_demo_recipe_runs_on_real_style_sar_chips(tmp_path, make_coco, capsys):
    """Nothing in the demo's recipe depends on the generator: 8-bit JPEG chips of 200-700 px with the
    user's own single category go through `sarmae pretrain demo/pretrain.yaml` (both targets) and
    `sarmae finetune demo/finetune.yaml` with only paths and a short run length given."""
    import numpy as np

    rng = np.random.default_rng(0)
    root = tmp_path / "ships"
    splits = {"train": [(200, 260), (512, 512), (700, 380), (300, 640)], "val": [(256, 256), (450, 600)]}
    for split, sizes in splits.items():
        images, annotations = [], []
        for i, (w, h) in enumerate(sizes):
            number = 100 * (split == "val") + i + 1
            images.append({"id": number, "file_name": f"{number:07d}.jpg", "width": w, "height": h})
            for _ in range(3):  # small ships, 6..20 px
                bw, bh = (int(v) for v in rng.integers(6, 21, 2))
                x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                annotations.append({"image_id": number, "category_id": 1, "bbox": [x, y, bw, bh]})
        make_coco(root, split, images, annotations, categories=[{"id": 1, "name": "vessel"}], seed=len(split))
    chips = root / "JPEGImages" / "train"
    for target in ("pixels", "gradients"):
        assert main(["pretrain", "demo/pretrain.yaml", f"data.images={chips}", f"model.target={target}",
                     f"out={tmp_path / target}", "epochs=1", "batch_size=2"]) == 0
        assert (tmp_path / target / "encoder.safetensors").is_file()
    assert main(["finetune", "demo/finetune.yaml", f"data.root={root}", "init=sar",
                 f"weights={tmp_path / 'gradients' / 'encoder.safetensors'}", f"out={tmp_path / 'ft'}", "epochs=1",
                 "batch_size=2", "eval.every=1"]) == 0
    printed = capsys.readouterr().out
    assert "init=sar from" in printed
    metrics = (tmp_path / "ft" / "metrics.csv").read_text()
    assert "val_mAP" in metrics.splitlines()[0] and len(metrics.splitlines()) == 2


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the demo's steps run side by side only on 2+ cores")
def test_sigterm_stops_the_demo_and_its_workers_and_the_rerun_resumes(tmp_path):
    """SIGTERM once the pre-trainings are in steady state (a step finished): the demo ends within 10 s with exit
    143, no worker left, each pre-training's checkpoint of its last step kept; the same command then finishes."""
    import subprocess
    import sys
    import time

    from test_pretrain import alive, start_and_signal_when_training

    env = {**os.environ, "SARMAE_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "demo"
    args = [sys.executable, "-m", "sarmae.cli", "demo", "--out", str(out), "--seeds", "1", "data.train=12",
            "data.val=6", "data.unlabeled=16", "data.size=64", "rows=[sar_pixels]",
            f"pretrain.overrides={[*TINY_MAE, 'epochs=20', 'batch_size=2']}",
            f"finetune.overrides={['model.pretrain_img_size=64', *TINY_DETECTOR]}"]
    proc, children, signalled = start_and_signal_when_training(
        args, env, tmp_path / "stdout.txt", log=out / "pretrain_sar_pixels" / "log.txt")
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - signalled < 10
    assert proc.returncode == 143 and "run the same command again to resume" in err
    time.sleep(0.5)
    assert children and alive(children) == []  # the workers went with the demo
    log = (out / "pretrain_sar_pixels" / "log.txt").read_text()
    assert "stopped by SIGTERM at epoch" in log and (out / "pretrain_sar_pixels" / "weights" / "last.ckpt").is_file()
    assert not (out / "table.md").exists()
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in (out / "pretrain_sar_pixels" / "log.txt").read_text()
    assert (out / "table.md").is_file() and (out / "probe.md").is_file()


@pytest.mark.parametrize(("override", "message"), [
    ("data.train=0", "data.train=0: must be a whole number >= 1"),
    ("rows=[sar_pixels,sar_pixel]", "rows=['sar_pixels', 'sar_pixel']: list each of natural"),
    ("encoders=mine", "encoders=mine: use shipped"),
    ("data.size=100", "data.size=100: must be a multiple of the ViT's 16-px patch"),
])
def test_an_impossible_demo_plan_stops_before_any_data_is_made(tmp_path, monkeypatch, capsys, override, message):
    monkeypatch.setenv("SARMAE_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--out", str(tmp_path / "demo"), override]) != 0
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists() and not (tmp_path / "demo").exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--gpus", "0"], "--gpus 0: must be a whole number >= 1"),
    (["--imagenet-weights", "/nowhere/mae.pth"], "--imagenet-weights /nowhere/mae.pth: no such file"),
    (["finetune.data.val_split=nosuch"], "nosuch.json: not found"),
])
def test_an_impossible_reproduce_plan_stops_before_any_step(tiny_dataset, tmp_path, capsys, extra, message):
    out = tmp_path / "repro"
    assert main([*reproduce_args(tiny_dataset, out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing measured, nothing written
