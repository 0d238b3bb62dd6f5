"""MAE reconstruction figure (paper Figure 2): the four panels, ``sarmae reconstruct``, bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sarmae.cli import main
from sarmae.config import load_config
from sarmae.infer.reconstruct import COLUMNS, reconstruction_panels
from sarmae.models.mae import build_mae
from sarmae.train.pretrain import run_pretrain

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # tiny models: see conftest

TINY_MODEL = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
              "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2}
DPI, INCHES = 80, 3  # draw_figure: 3 x 3 inch panels saved at 80 dpi




def speckled_blobs(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """8-bit SAR-like chip: a bright blob on gamma speckle."""
    y, x = np.mgrid[:size, :size]
    cy, cx = rng.uniform(10, size - 10, 2)
    blob = 150 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 40)
    return np.clip(40 * rng.gamma(4, 0.25, (size, size)) + blob, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(speckled_blobs(rng)).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def checkpoint(images, tmp_path_factory) -> Path:
    """``weights/last.ckpt`` of a one-epoch tiny pre-training run."""
    overrides = [f"model.{k}={v}" for k, v in TINY_MODEL.items()] + [
        f"data.images={images}", f"out={tmp_path_factory.mktemp('run')}", "epochs=1", "batch_size=3",
        "data.workers=0", "figure.every=0",
    ]
    return run_pretrain(load_config("mae_tiny", overrides)) / "weights" / "last.ckpt"


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_cli_writes_four_columns_and_skips_unreadable_images(checkpoint, images, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("000.png", "001.png"):
        (inputs / name).write_bytes((images / name).read_bytes())
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "figs" / "recon.png"
    assert main(["reconstruct", str(checkpoint), str(inputs), str(images / "005.png"), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and f"wrote {out}" in captured.out
    # 3 readable images -> 3 rows of 4 panels (original | masked | reconstruction | pasted).
    assert len(COLUMNS) == 4
    assert png_size(out) == (4 * INCHES * DPI, 3 * INCHES * DPI)


def test_cli_with_only_unreadable_images_is_a_one_line_error(checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    assert main(["reconstruct", str(checkpoint), str(bad), "--out", str(tmp_path / "x.png")]) == 2
    assert "could be read" in one_error_line(capsys)
    assert main(["reconstruct", str(checkpoint), str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")]) == 2
    assert "missing" in one_error_line(capsys)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated", "encoder_only", "detector"])
def test_cli_bad_checkpoint_is_a_one_line_error(checkpoint, images, tmp_path, capsys, kind):
    path = tmp_path / "model.ckpt"
    if kind == "garbage":
        path.write_bytes(b"definitely not a checkpoint")
    elif kind == "truncated":
        data = checkpoint.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "encoder_only":
        path = checkpoint.parent.parent / "encoder.safetensors"
    elif kind == "detector":  # a fine-tuning checkpoint: has a cfg, but of a detector
        torch.save({"state_dict": {"model.x": torch.zeros(1)},
                    "hyper_parameters": {"cfg": {"model": {"size": "tiny"}}, "classes": {"names": ["ship"]}}}, path)
    assert main(["reconstruct", str(path), str(images), "--out", str(tmp_path / "x.png")]) == 2
    line = one_error_line(capsys)
    assert str(path) in line and "pretrain" in line


def test_panels_follow_the_mask_and_leave_the_global_rng_alone():
    torch.manual_seed(0)
    model = build_mae({**TINY_MODEL, "norm_pix_loss": False})
    imgs = torch.randn(2, 3, 32, 32)
    rng_before = torch.get_rng_state()
    panels = reconstruction_panels(model, imgs, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert list(panels) == list(COLUMNS) and all(p.shape == imgs.shape for p in panels.values())

    original, masked, recon, pasted = panels.values()
    assert torch.equal(original, imgs)
    # Pixel-level mask from the "masked input" panel: removed patches are exactly zero.
    removed = (masked == 0).all(dim=1, keepdim=True).expand_as(imgs)
    patch_removed = removed[:, 0].reshape(2, 4, 8, 4, 8).all(dim=4).all(dim=2)  # (N, 4, 4) patch grid
    assert patch_removed.float().mean().item() == pytest.approx(0.75)  # mask ratio 0.75: 12 of 16 patches
    torch.testing.assert_close(pasted[~removed], imgs[~removed])
    torch.testing.assert_close(pasted[removed], recon[removed])
    torch.testing.assert_close(masked[~removed], imgs[~removed])
    assert not torch.allclose(recon, imgs)

    again = reconstruction_panels(model, imgs, seed=3)
    other = reconstruction_panels(model, imgs, seed=4)
    assert torch.equal(again[COLUMNS[1]], masked) and not torch.equal(other[COLUMNS[1]], masked)


def test_norm_pix_loss_reconstruction_is_back_in_pixel_space():
    torch.manual_seed(0)
    model = build_mae({**TINY_MODEL, "norm_pix_loss": True})
    imgs = torch.rand(1, 3, 32, 32) * 4 + 10  # far from zero mean / unit variance
    recon = reconstruction_panels(model, imgs, seed=0)[COLUMNS[2]]
    patches = model.patchify(recon)
    target = model.patchify(imgs)
    # Each predicted patch is de-normalised with its own target patch's mean and std.
    assert patches.mean(-1).sub(target.mean(-1)).abs().max() < 2.0
