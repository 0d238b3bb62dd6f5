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


def test_demo_runs_every_step_and_writes_table_and_figures(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SARMAE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    overrides = ["data.train=12", "data.val=6", "data.unlabeled=16", "data.size=64",
                 f"pretrain.overrides={TINY_MAE}",
                 f"finetune.overrides={['model.pretrain_img_size=64', *TINY_DETECTOR]}"]
    assert main(["demo", "--out", str(out), *overrides]) == 0
    printed = capsys.readouterr().out
    table = (out / "table.md").read_text()
    assert "| Pre-train data" in table and "- (scratch)" in table and "SAR (synthetic, MAE)" in table
    assert "12 labeled / 16 unlabeled images" in table and table.split("\n\n", 1)[1].strip() in printed
    rows = json.loads((out / "table.json").read_text())
    assert set(rows) == {"- (scratch)", "SAR (synthetic, MAE)"}
    for row in rows.values():
        assert len(row["runs"]) == 1 and set(row["summary"]) == {"mAP", "AP50", "AP75", "mAP_s", "mAP_m", "mAP_l"}
    # identical budgets: both rows trained the same number of steps with the same seed
    configs = [yaml.safe_load((out / f"finetune_{init}_seed0" / "config.yaml").read_text())
               for init in ("scratch", "sar")]
    assert [c.pop("init") for c in configs] == ["scratch", "sar"] and configs[1].pop("weights").endswith(".safetensors")
    for cfg in configs:
        cfg.pop("out"), cfg.pop("weights", None)
    assert configs[0] == configs[1] and configs[0]["epochs"] == 1 and configs[0]["seed"] == 0
    assert (out / "figure2_reconstruction.png").stat().st_size > 0
    assert (out / "figure3_detections.png").stat().st_size > 0
    logs = sorted(out.glob("finetune_*_seed0/log.txt"))
    if os.cpu_count() > 1:  # the two rows ran side by side, each logging to its own file
        assert "2 at a time" in printed and len(logs) == 2
    assert "init=sar from" in printed + "".join(log.read_text() for log in logs)
    # the dataset is cached: a second demo into another folder does not generate it again
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and (cached[0] / "synth.json").is_file()


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


def test_side_by_side_progress_reads_the_last_progress_line(tmp_path):
    from sarmae.experiments.demo import _epochs_done

    log = tmp_path / "log.txt"
    assert _epochs_done(log) == 0.0  # not started yet
    log.write_text("init=sar from x\n" + "".join(
        f"\rEpoch {e}:  {100 * s // 44}%|###   | {s}/44 [00:01<00:02,  2.2it/s, loss=0.5]" for e in range(3)
        for s in range(45)) + "\rEpoch 3:  25%|##    | 11/44 [00:05<00:15, 2.2it/s]")
    assert _epochs_done(log) == pytest.approx(3.25)
