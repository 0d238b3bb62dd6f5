"""MAE pre-training engine: run folder, loss, lr schedule, exact resume, damaged checkpoints, bad images, DDP.

Everything trains a ~0.1 M-parameter MAE on 64-px synthetic SAR chips (``sarmae.data.synth``), so whole
runs take about a second; the paper ViT-B/16 config gets one real optimiser step (~10 s).
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

from sarmae.cli import main
from sarmae.config import load_config
from sarmae.data.synth import write_dataset
from sarmae.errors import CheckpointError, Stopped
from sarmae.models.mae import build_mae
from sarmae.train import pretrain as pretrain_module
from sarmae.train.pretrain import no_decay, param_groups, peak_lr, run_pretrain, warmup_cosine
from sarmae.train.runs import resume_position

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # tiny models: see conftest

TINY = [
    "model.img_size=64",
    "model.embed_dim=64",
    "model.depth=2",
    "model.num_heads=2",
    "model.decoder_embed_dim=32",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
    "batch_size=8",
    "data.workers=0",
    "trainer.log_every=1",
    "figure.every=0",
]
N_IMAGES = 32  # 4 optimiser steps per epoch at batch 8




@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory) -> Path:
    """32 synthetic 64-px SAR chips (sea, coast, urban... with ships and cars): structure worth learning."""
    out = tmp_path_factory.mktemp("synth") / "ds"
    write_dataset(out, train=0, val=0, test=0, unlabeled=N_IMAGES, size=64, seed=0)
    return out / "Unlabeled"


def pretrain(images: Path, out: Path, *overrides: str) -> Path:
    cfg = load_config("mae_tiny", [*TINY, f"data.images={images}", f"out={out}", *overrides])
    return run_pretrain(cfg)


def read_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def curve(run_dir: Path) -> tuple[list[int], np.ndarray, np.ndarray]:
    rows = read_rows(run_dir)
    return (
        [int(r["step"]) for r in rows],
        np.array([float(r["loss"]) for r in rows]),
        np.array([float(r["lr"]) for r in rows]),
    )


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


@pytest.fixture(scope="module")
def two_epoch_run(unlabeled, tmp_path_factory) -> Path:
    """A finished 2-epoch run (``resume=auto`` in an empty folder: a fresh start)."""
    return pretrain(unlabeled, tmp_path_factory.mktemp("runs") / "two", "epochs=2", "resume=auto")


# -- 1. a real run ------------------------------------------------------------------------------------


def test_tiny_pretraining_lowers_loss_and_fills_the_run_folder(unlabeled, tmp_path, capsys):
    run_dir = pretrain(
        unlabeled, tmp_path / "run", "epochs=5", "optim.blr=5e-2", "optim.warmup_epochs=1",
        "trainer.save_every=2", "figure.every=3", "figure.images=2",
    )
    for name in ("config.yaml", "metrics.csv", "encoder.safetensors", "weights/last.ckpt",
                 "weights/epoch002.ckpt", "weights/epoch004.ckpt", "figures/reconstruction_epoch003.png",
                 "figures/reconstruction_epoch005.png"):  # figures every 3 epochs and at the end
        assert (run_dir / name).is_file(), name
    assert len(list((run_dir / "figures").iterdir())) == 2 and len(list((run_dir / "weights").iterdir())) == 3
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["epochs"] == 5 and saved["data"]["images"] == str(unlabeled) and saved["model"]["embed_dim"] == 64

    rows = read_rows(run_dir)
    assert list(rows[0]) == ["epoch", "step", "loss", "lr", "images_per_s"]
    assert [int(r["step"]) for r in rows] == list(range(1, 21))
    assert all(float(r["images_per_s"]) > 0 for r in rows)
    per_epoch = [np.mean([float(r["loss"]) for r in rows if int(r["epoch"]) == e]) for e in range(5)]
    assert per_epoch[-1] < 0.9 * per_epoch[0], per_epoch

    # lr column = blr x 8 / 256 x schedule(step - 1): 20 steps, 4 of warm-up (1 of 5 epochs).
    peak = 5e-2 * 8 / 256
    expected = [peak * warmup_cosine(int(r["step"]) - 1, 20, 4) for r in rows]
    np.testing.assert_allclose([float(r["lr"]) for r in rows], expected, rtol=1e-5, atol=1e-12)

    # The exported encoder is the final model and loads strictly into a timm ViT of the same size.
    vit = VisionTransformer(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2, num_classes=0)
    encoder = load_file(str(run_dir / "encoder.safetensors"))
    vit.load_state_dict(encoder, strict=True)
    ckpt = load_ckpt(run_dir / "weights" / "last.ckpt")
    assert ckpt["global_step"] == 20
    assert torch.equal(encoder["blocks.1.mlp.fc2.weight"], ckpt["state_dict"]["model.blocks.1.mlp.fc2.weight"])
    # Weight-decay groups as configured: decayed matrices, undecayed biases / norms.
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]

    bar = capsys.readouterr().out  # Lightning's tqdm bars write to stdout
    assert "eta=" in bar and "img/s=" in bar and "lr=" in bar and "loss=" in bar


# -- 2. resume ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_killed_run_resumes_on_the_same_curve(unlabeled, tmp_path, dies_while_saving, workers):
    common = ("epochs=2", f"data.workers={workers}", "data.random_resized_crop=true")
    a = pretrain(unlabeled, tmp_path / "A", *common)

    # B dies while writing the checkpoint of its last epoch: metrics.csv already holds that epoch's rows,
    # weights/last.ckpt is still the one of the first epoch.
    with dies_while_saving(1):
        pretrain(unlabeled, tmp_path / "B", *common)
    b = tmp_path / "B"
    assert len(read_rows(b)) == 8 and load_ckpt(b / "weights" / "last.ckpt")["global_step"] == 4

    pretrain(unlabeled, b, *common, "resume=auto")
    assert curve(b)[0] == list(range(1, 9))  # rows 5..8 of the killed run are not duplicated
    assert_same_run(a, b)


def assert_same_run(a: Path, b: Path) -> None:
    """Same loss and lr curve, no duplicated rows, same final weights."""
    steps_a, loss_a, lr_a = curve(a)
    steps_b, loss_b, lr_b = curve(b)
    assert steps_b == steps_a
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lr_b, lr_a, rtol=1e-6, atol=1e-12)
    weights_a = load_ckpt(a / "weights" / "last.ckpt")["state_dict"]
    weights_b = load_ckpt(b / "weights" / "last.ckpt")["state_dict"]
    for key in weights_a:
        torch.testing.assert_close(weights_b[key], weights_a[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_mid_epoch_saves_that_step_and_the_resumed_run_equals_an_uninterrupted_one(
        unlabeled, tmp_path, sigterm_at_step, workers):
    common = ("epochs=2", f"data.workers={workers}", "data.random_resized_crop=true")
    a = pretrain(unlabeled, tmp_path / "A", *common)
    disarm = sigterm_at_step(pretrain_module, 6)  # step 6 of 8: epoch 1, batch 2
    handler = signal.getsignal(signal.SIGTERM)
    b = tmp_path / "B"
    with pytest.raises(Stopped) as stopped:
        pretrain(unlabeled, b, *common)
    assert signal.getsignal(signal.SIGTERM) is handler  # the training's own handler is gone again
    assert stopped.value.signum == signal.SIGTERM
    assert f"stopped by SIGTERM at epoch 1, step 6: saved {b / 'weights' / 'last.ckpt'}" in stopped.value.message
    ckpt = load_ckpt(b / "weights" / "last.ckpt")
    assert ckpt["global_step"] == 6 and resume_position(ckpt) == (1, 2)  # mid-epoch, not the epoch-0 checkpoint
    assert [int(r["step"]) for r in read_rows(b)] == [1, 2, 3, 4, 5, 6]  # the rows up to the checkpoint

    disarm()
    with pytest.raises(CheckpointError, match="stopped in the middle of epoch 1 with batch_size=8; resume with that"):
        pretrain(unlabeled, b, *common, "resume=auto", "batch_size=4")  # the position counts batches of 8
    last = b / "weights" / "last.ckpt"
    saved = last.read_bytes()
    assert ckpt["world_size"] == 1
    torch.save({**ckpt, "world_size": 2}, b / "edited.ckpt")  # as if the stopped run had trained on 2 processes
    (b / "edited.ckpt").replace(last)  # a new file: ckpt's tensors are mapped from the old one
    with pytest.raises(CheckpointError, match="stopped in the middle of epoch 1 on 2 processes; resume on 2"):
        pretrain(unlabeled, b, *common, "resume=auto")  # each rank's position holds only for 2 ranks
    last.write_bytes(saved)
    pretrain(unlabeled, b, *common, "resume=auto")
    assert_same_run(a, b)


def start_and_signal_when_training(args: list[str], env: dict, stdout: Path, log: Path | None = None
                                   ) -> tuple[subprocess.Popen, list[int], float]:
    """Start a command (its stdout into the file ``stdout``), wait until a training step has finished (a progress
    line ``n/N`` with n >= 1, on stdout or in ``log``), then SIGTERM it; returns the process, its children at that
    moment and the time of the signal."""
    import re

    with stdout.open("w") as sink:
        proc = subprocess.Popen(args, env=env, stdout=sink, stderr=subprocess.PIPE, text=True)
    step = re.compile(r"Epoch \d+:\s+\d+%\|[^|]*\| [1-9]\d*/\d+")
    watched = log or stdout
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if watched.is_file() and step.search(watched.read_text(errors="replace")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the command ended before a training step was seen"
    children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    proc.send_signal(signal.SIGTERM)
    return proc, children, time.monotonic()


def alive(pids: list[int]) -> list[int]:
    """The pids among ``pids`` still running (zombies count as gone)."""
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()
            and Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"]


def test_sigterm_in_the_last_step_of_an_epoch_stops_after_its_checkpoint(unlabeled, tmp_path, sigterm_at_step):
    """Step 4 is epoch 0's last: the epoch ends as usual (its checkpoint), then the run stops; resume == straight."""
    a = pretrain(unlabeled, tmp_path / "A", "epochs=2")
    disarm = sigterm_at_step(pretrain_module, 4)
    b = tmp_path / "B"
    with pytest.raises(Stopped, match="at epoch 0, step 4: saved"):
        pretrain(unlabeled, b, "epochs=2")
    assert resume_position(load_ckpt(b / "weights" / "last.ckpt")) == (1, 0)
    disarm()
    pretrain(unlabeled, b, "epochs=2", "resume=auto")
    assert_same_run(a, b)


def test_sigterm_to_sarmae_pretrain_while_it_trains(unlabeled, tmp_path):
    """The steady state: SIGTERM once steps are running (loader workers alive) ends the command within 10 s with
    exit 143, no process left and a checkpoint of its last step; the same command then finishes the run, equal to
    an uninterrupted one."""
    run = tmp_path / "run"
    common = [*TINY, "epochs=10", "data.workers=2", "trainer.precision=32-true"]
    args = [sys.executable, "-m", "sarmae.cli", "pretrain", "mae_tiny", *common, f"data.images={unlabeled}",
            f"out={run}", "resume=auto"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc, children, signalled = start_and_signal_when_training(args, env, tmp_path / "stdout.txt")
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - signalled < 10
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM at epoch" in err and "resume=auto" in err
    time.sleep(0.5)
    assert children and alive(children) == []  # the loader workers went too
    step = load_ckpt(run / "weights" / "last.ckpt")["global_step"]
    assert 0 < step < 40 and f", step {step}: saved" in err

    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stdout
    assert_same_run(pretrain(unlabeled, tmp_path / "straight", *common), run)


def test_resume_extends_epochs_and_keeps_metrics(two_epoch_run, unlabeled, tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "weights").mkdir(parents=True)
    for name in ("metrics.csv", "weights/last.ckpt"):
        (run_dir / name).write_bytes((two_epoch_run / name).read_bytes())
    before = read_rows(run_dir)
    assert [int(r["step"]) for r in before] == list(range(1, 9))

    pretrain(unlabeled, run_dir, "epochs=2", "resume=auto")  # finished: nothing to do, nothing rewritten
    assert "nothing left to train" in capsys.readouterr().out
    assert read_rows(run_dir) == before

    pretrain(unlabeled, run_dir, "epochs=3", "resume=auto")
    rows = read_rows(run_dir)
    assert rows[:8] == before
    assert [int(r["step"]) for r in rows] == list(range(1, 13)) and rows[-1]["epoch"] == "2"
    ckpt = load_ckpt(run_dir / "weights" / "last.ckpt")
    assert ckpt["global_step"] == 12 and ckpt["optimizer_states"][0]["state"]  # optimiser moments came along
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["epochs"] == 3
    assert (run_dir / "encoder.safetensors").is_file()


def test_resume_auto_without_checkpoint_starts_fresh(two_epoch_run):
    rows = read_rows(two_epoch_run)  # the fixture ran with resume=auto in an empty folder
    assert [int(r["step"]) for r in rows] == list(range(1, 9))


def _cli_error(capsys, args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_damaged_last_checkpoint_is_a_one_line_cli_error(two_epoch_run, unlabeled, tmp_path, capsys, damage):
    run_dir = tmp_path / "run"
    (run_dir / "weights").mkdir(parents=True)
    data = bytearray((two_epoch_run / "weights" / "last.ckpt").read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        middle = len(data) // 2
        data[middle : middle + 32] = bytes(b ^ 0xFF for b in data[middle : middle + 32])
    else:
        data = bytearray()
    (run_dir / "weights" / "last.ckpt").write_bytes(bytes(data))
    line = _cli_error(
        capsys,
        ["pretrain", "mae_tiny", *TINY, f"data.images={unlabeled}", f"out={run_dir}", "epochs=3", "resume=auto"],
    )
    assert "last.ckpt" in line and "damaged" in line


def test_resume_from_another_model_or_missing_file_is_a_one_line_cli_error(two_epoch_run, unlabeled, capsys):
    ckpt = two_epoch_run / "weights" / "last.ckpt"
    args = ["pretrain", "mae_tiny", *TINY, f"data.images={unlabeled}", f"out={two_epoch_run.parent / 'other'}"]
    line = _cli_error(capsys, [*args, "epochs=3", f"resume={ckpt}", "model.embed_dim=32"])
    assert "last.ckpt" in line and "config.yaml" in line
    line = _cli_error(capsys, [*args, "epochs=3", f"resume={two_epoch_run / 'nope.ckpt'}"])
    assert "nope.ckpt" in line


# -- 3. DDP ---------------------------------------------------------------------------------------------


def test_ddp_two_cpu_processes(unlabeled, tmp_path):
    run_dir = tmp_path / "ddp"
    overrides = [o for o in TINY if not o.startswith("batch_size")]
    cmd = [
        sys.executable, "-m", "sarmae.cli", "pretrain", "mae_tiny", *overrides, "batch_size=4", "epochs=1",
        f"data.images={unlabeled}", f"out={run_dir}", "trainer.accelerator=cpu", "trainer.devices=2",
        "trainer.strategy=ddp", "trainer.accumulate=2", "optim.warmup_epochs=0", "optim.blr=1e-3",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("pre-training on") == 1
    assert sorted(p.name for p in (run_dir / "weights").iterdir()) == ["last.ckpt"]
    assert (run_dir / "encoder.safetensors").is_file()
    # 32 images over 2 ranks x batch 4 = 4 batches per rank, 2 accumulated per step -> 2 steps, one row each.
    steps, _, lr = curve(run_dir)
    assert steps == [1, 2]
    eff_batch = 4 * 2 * 2
    assert lr[0] == pytest.approx(1e-3 * eff_batch / 256, rel=1e-5)  # no warm-up: the first step uses the peak
    assert load_ckpt(run_dir / "weights" / "last.ckpt")["global_step"] == 2


# -- 4. bad images ----------------------------------------------------------------------------------------


@pytest.fixture
def folder_with_a_bad_image(unlabeled, tmp_path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for path in sorted(unlabeled.glob("*.png"))[:15]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"not a png at all")
    return folder


def test_bad_image_is_skipped_and_counted(folder_with_a_bad_image, tmp_path, capsys, caplog):
    run_dir = pretrain(folder_with_a_bad_image, tmp_path / "run", "epochs=1")
    assert "epoch 0: skipped 1 unreadable images" in capsys.readouterr().out
    assert "broken.png" in caplog.text  # the warning names the file
    assert (run_dir / "weights" / "last.ckpt").is_file()
    assert [int(r["step"]) for r in read_rows(run_dir)] == [1, 2]


def test_batch_made_only_of_bad_images_is_skipped(unlabeled, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for path in sorted(unlabeled.glob("*.png"))[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    for name in ("bad1.png", "bad2.jpg"):
        (folder / name).write_bytes(b"garbage")
    run_dir = pretrain(folder, tmp_path / "run", "epochs=2", "batch_size=1")
    assert "epoch 1: skipped 2 unreadable images" in capsys.readouterr().out
    rows = read_rows(run_dir)
    assert len(rows) == 6 and all(np.isfinite(float(r["loss"])) for r in rows)  # one row per good image


def test_strict_stops_with_one_line_naming_the_image(folder_with_a_bad_image, tmp_path, capsys):
    # Two workers: the error crosses a process boundary, where torch wraps it in the worker's traceback.
    args = ["pretrain", "mae_tiny", *TINY, f"data.images={folder_with_a_bad_image}", f"out={tmp_path / 'run'}",
            "epochs=1", "data.strict=true", "data.workers=2"]
    line = _cli_error(capsys, args)
    assert "broken.png" in line and "Caught" not in line


# -- 5. schedule and optimiser groups ----------------------------------------------------------------------


def test_warmup_cosine_schedule():
    total, warmup = 100, 10
    values = [warmup_cosine(s, total, warmup, min_ratio=0.1) for s in range(total + 1)]
    np.testing.assert_allclose(values[:warmup + 1], np.linspace(0, 1, warmup + 1))  # linear from 0
    assert all(a >= b for a, b in zip(values[warmup:], values[warmup + 1 :]))  # then never increases
    assert values[55] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert values[total] == pytest.approx(0.1) and warmup_cosine(10 * total, total, warmup, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(0, total, 0) == 1.0


def test_lr_rule_uses_the_effective_batch():
    assert peak_lr({"lr": None, "blr": 1.5e-4, "base_batch": 256}, 512) == pytest.approx(3e-4)
    assert peak_lr({"lr": None, "blr": 1.5e-4, "base_batch": 256}, 64) == pytest.approx(1.5e-4 / 4)
    assert peak_lr({"lr": 1e-3, "blr": 1.5e-4, "base_batch": 256}, 64) == 1e-3  # an explicit lr wins


def test_weight_decay_groups():
    model = build_mae({"img_size": 32, "embed_dim": 32, "depth": 1, "num_heads": 2, "decoder_embed_dim": 16,
                       "decoder_depth": 1, "decoder_num_heads": 2})
    names = {id(p): n for n, p in model.named_parameters()}
    decay, plain = ([names[id(p)] for p in g["params"]] for g in param_groups(model, 0.05))
    assert {"cls_token", "mask_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight",
            "decoder_pred.weight"} <= set(decay)
    assert {"patch_embed.proj.bias", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias", "norm.weight",
            "decoder_norm.bias"} <= set(plain)
    assert not any(n.endswith(".bias") or "norm" in n for n in decay)
    assert "pos_embed" not in decay + plain and "decoder_pos_embed" not in decay + plain  # frozen sin-cos
    assert no_decay("pos_embed", torch.zeros(1, 5, 8))
    assert len(decay) + len(plain) == sum(p.requires_grad for p in model.parameters())


# -- 7. the paper config --------------------------------------------------------------------------------------


def test_paper_config_vitb16_one_step(unlabeled, tmp_path):
    """~10 s on one CPU thread; writes a 1.15 GB last.ckpt (encoder + decoder + AdamW moments), removed after."""
    cfg = load_config("mae_vitb16_sardet100k")
    encoder = build_mae(cfg["model"]).encoder_state_dict()
    assert sum(v.numel() for v in encoder.values()) / 1e6 == pytest.approx(85.8, abs=0.1)

    images = tmp_path / "two"
    images.mkdir()
    for path in sorted(unlabeled.glob("*.png"))[:2]:
        (images / path.name).write_bytes(path.read_bytes())
    cfg = load_config("mae_vitb16_sardet100k", [
        f"data.images={images}", "epochs=1", "batch_size=2", "trainer.limit_train_batches=1", "data.workers=0",
        f"out={tmp_path / 'run'}", "trainer.log_every=1", "trainer.accelerator=cpu", "trainer.devices=1",
    ])
    run_dir = run_pretrain(cfg)
    rows = read_rows(run_dir)
    assert [int(r["step"]) for r in rows] == [1] and np.isfinite(float(rows[0]["loss"]))
    ckpt = load_ckpt(run_dir / "weights" / "last.ckpt")
    assert ckpt["global_step"] == 1
    assert ckpt["state_dict"]["model.pos_embed"].shape == (1, 257, 768)
    assert (run_dir / "encoder.safetensors").is_file()
    del ckpt
    shutil.rmtree(run_dir)  # pytest keeps the last runs' tmp folders: do not leave 1.5 GB behind
