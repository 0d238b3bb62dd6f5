"""Packed shards (``sarmae data pack`` -> ``sarmae pretrain data.shards=...``): what is stored, how it streams
across DDP ranks, that training from shards is the folder run sample for sample, and exact resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sarmae.cli import main
from sarmae.data.shards import pack_images, packed_images, stored_pixels
from sarmae.data.synth import write_dataset
from sarmae.data.transforms import mae_transforms
from sarmae.data.unlabeled import UnlabeledImages
from sarmae.errors import DataError

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

TINY = [
    "model.img_size=64", "model.embed_dim=64", "model.depth=2", "model.num_heads=2", "model.decoder_embed_dim=32",
    "model.decoder_depth=1", "model.decoder_num_heads=2", "data.workers=0", "trainer.log_every=1", "figure.every=0",
    "optim.warmup_epochs=0", "optim.blr=1e-3",
]


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> Path:
    """32 synthetic 64-px grey PNG chips."""
    out = tmp_path_factory.mktemp("synth") / "ds"
    write_dataset(out, train=0, val=0, test=0, unlabeled=32, size=64, seed=0)
    return out / "Unlabeled"


def test_stored_pixels_keep_grey_one_band_and_cap_the_side(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (300, 200), dtype=np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb_grey.png")  # SARDet-100K style: RGB, equal bands
    colour = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    pixels, h, w = stored_pixels(str(tmp_path / "rgb_grey.png"), max_size=512)
    assert (h, w) == (300, 200) and pixels.shape == (300, 200) and np.array_equal(pixels, grey)  # lossless
    pixels, h, w = stored_pixels(str(tmp_path / "rgb_grey.png"), max_size=150)
    assert (h, w) == (300, 200) and pixels.shape == (150, 100)  # capped, the original size remembered
    assert abs(float(pixels.mean()) - float(grey.mean())) < 1.0  # an area resize keeps the mean
    pixels, _, _ = stored_pixels(str(tmp_path / "colour.png"), max_size=512)
    assert np.array_equal(pixels, colour)
    u16 = (rng.random((30, 30)) * 60000).astype(np.uint16)
    Image.fromarray(u16).save(tmp_path / "deep.png")  # 16-bit: scaled like the folder loader, then 8 bits
    pixels, _, _ = stored_pixels(str(tmp_path / "deep.png"), max_size=512)
    assert pixels.dtype == np.uint8 and pixels.shape == (30, 30) and pixels.min() == 0 and pixels.max() == 255


def test_packed_samples_equal_the_folder_loader(chips, tmp_path):
    """Same seed, same crops: a packed item goes through the same 8-bit path as its file."""
    out = pack_images([chips], tmp_path / "shards", max_size=512).out
    transform = mae_transforms(size=48, random_resized_crop=True)
    folder = UnlabeledImages(chips, transform=transform)
    packed = packed_images(str(out), transform, shuffle=False)
    assert len(packed) == len(folder) == 32
    for i in (0, 7, 31):
        torch.manual_seed(i)
        a = folder[i]
        torch.manual_seed(i)
        b = packed[i]
        assert a.shape == b.shape == (3, 48, 48) and torch.equal(a, b)


def test_pack_skips_bad_images_and_refuses_to_overwrite(chips, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for path in sorted(chips.glob("*.png"))[:3]:
        (src / path.name).write_bytes(path.read_bytes())
    (src / "broken.png").write_bytes(b"not a png")
    assert main(["data", "pack", str(src), str(tmp_path / "out"), "max_size=64"]) == 0
    info = json.loads((tmp_path / "out" / "pack_info.json").read_text())
    assert info["images"] == 3 and len(info["skipped"]) == 1 and "broken.png" in info["skipped"][0]
    assert "packed 3 images" in capsys.readouterr().out
    with pytest.raises(DataError, match="already exists"):
        pack_images([src], tmp_path / "out")
    assert main(["pretrain", "mae_tiny", *TINY, f"data.shards={tmp_path / 'nope'}", f"out={tmp_path / 'r'}"]) == 2
    assert "no index.json there" in capsys.readouterr().err


def _pretrain_two_ranks(tmp_path: Path, name: str, *data: str) -> list[str]:
    run_dir = tmp_path / name
    cmd = [sys.executable, "-m", "sarmae.cli", "pretrain", "mae_tiny", *TINY, "batch_size=4", "epochs=1",
           *data, "data.shuffle=false", f"out={run_dir}", "trainer.accelerator=cpu", "trainer.devices=2",
           "trainer.strategy=ddp"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return (run_dir / "metrics.csv").read_text().splitlines()


def test_two_ranks_from_shards_follow_the_folder_run_loss_for_loss(chips, tmp_path):
    """DDP over 2 CPU processes: the folder run's sampler gives rank r the images r, r+2, ...; LitData gives each
    rank a contiguous half of the shards. Packed in that order, both runs see the same images in the same steps,
    so their loss curves must be equal (a rank reading the other's half, or different pixels, would show)."""
    files = sorted(str(p) for p in chips.glob("*.png"))
    shards = pack_images(files[0::2] + files[1::2], tmp_path / "shards", max_size=512).out
    folder = _pretrain_two_ranks(tmp_path, "folder", f"data.images={chips}")
    streamed = _pretrain_two_ranks(tmp_path, "streamed", f"data.shards={shards}")
    assert len(folder) == 1 + 4  # header + 4 optimiser steps (16 images per rank at batch 4)
    cut = [",".join(row.split(",")[:4]) for row in folder]  # epoch, step, loss, lr (not images/s)
    assert [",".join(row.split(",")[:4]) for row in streamed] == cut


def test_killed_run_from_shards_resumes_on_the_same_curve(chips, tmp_path, dies_while_saving):
    """Shuffled shards, 3 epochs: a run killed while saving epoch 2 and resumed (resume=auto from epoch 1's
    checkpoint) ends on the same loss curve as the run that was not killed."""
    from sarmae.config import load_config
    from sarmae.train.pretrain import run_pretrain

    shards = pack_images([chips], tmp_path / "shards", max_size=512).out

    def run(out: Path, *extra: str) -> list[str]:
        cfg = load_config("mae_tiny", [*TINY, "batch_size=8", "epochs=3", f"data.shards={shards}", f"out={out}",
                                       "data.random_resized_crop=true", *extra])
        run_pretrain(cfg)
        return [",".join(r.split(",")[:4]) for r in (out / "metrics.csv").read_text().splitlines()]

    straight = run(tmp_path / "straight")
    with dies_while_saving(1):
        run(tmp_path / "killed")
    resumed = run(tmp_path / "killed", "resume=auto")
    assert len(straight) == 1 + 12 and resumed == straight
    assert len(set(straight[1:5]) & set(straight[5:9])) == 0  # the epochs differ (a replayed epoch would not)


def test_sigterm_mid_epoch_from_shards_resumes_at_that_step(chips, tmp_path, sigterm_at_step):
    """SIGTERM during step 6 of 12 (epoch 1, batch 2): LitData's loader position and the RNG go into last.ckpt, and
    the resumed run streams the rest of epoch 1 as the uninterrupted run did (same loss curve)."""
    from sarmae.config import load_config
    from sarmae.errors import Stopped
    from sarmae.train import pretrain as pretrain_module

    shards = pack_images([chips], tmp_path / "shards", max_size=512).out

    def run(out: Path, *extra: str) -> list[str]:
        cfg = load_config("mae_tiny", [*TINY, "batch_size=8", "epochs=3", f"data.shards={shards}", f"out={out}",
                                       "data.random_resized_crop=true", *extra])
        pretrain_module.run_pretrain(cfg)
        return [",".join(r.split(",")[:4]) for r in (out / "metrics.csv").read_text().splitlines()]

    straight = run(tmp_path / "straight")
    disarm = sigterm_at_step(pretrain_module, 6)
    with pytest.raises(Stopped, match="epoch 1, step 6"):
        run(tmp_path / "stopped")
    disarm()
    assert run(tmp_path / "stopped", "resume=auto") == straight
