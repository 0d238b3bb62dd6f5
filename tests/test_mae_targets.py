"""MAE targets (``model.target``): pixels / norm_pixels / SAR ratio gradients; shapes, invariances, loss, config."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sarmae.config import load_config
from sarmae.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sarmae.errors import ConfigError
from sarmae.models.mae import MaskedAutoencoder, build_mae
from sarmae.models.mae_targets import TARGETS, intensity, ratio_gradients, sar_gradient_target, target_dim
from sarmae.train.pretrain import check_target_normalisation

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

SMALL = dict(
    img_size=64,
    patch_size=16,
    embed_dim=32,
    depth=1,
    num_heads=2,
    decoder_embed_dim=32,
    decoder_depth=1,
    decoder_num_heads=2,
)
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def small_mae(target: str, **kw) -> MaskedAutoencoder:
    torch.manual_seed(0)
    return MaskedAutoencoder(**{**SMALL, **kw}, target=target)


def normalise(intens: torch.Tensor) -> torch.Tensor:
    """Intensity (N, 1, H, W) in [0, 1] -> the model's input: gray as RGB, ImageNet-normalised."""
    return (intens.expand(-1, 3, -1, -1) - MEAN) / STD


def speckled_blobs(n: int, size: int = 64, seed: int = 0, looks: int = 2, speckle_seed: int = 0) -> torch.Tensor:
    """(n, 1, size, size) intensity in [0, 1]: dark clutter + 3 bright discs, times L-look gamma speckle."""
    g, gs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(1000 + speckle_seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    images = []
    for _ in range(n):
        mean = torch.full((size, size), 0.08)
        for _ in range(3):
            cy, cx = (torch.rand(2, generator=g) * (size - 16) + 8).tolist()
            radius = 3 + 5 * torch.rand(1, generator=g).item()
            mean = mean + 0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2).float()
        # Gamma(L, L) speckle as the mean of L unit exponentials.
        speckle = -torch.log(torch.rand(looks, size, size, generator=gs)).mean(0)
        images.append(mean * speckle)
    return torch.stack(images)[:, None].clamp(0, 1)


@pytest.mark.parametrize("target", TARGETS)
def test_target_shapes_and_decoder_width(target):
    mae = small_mae(target)
    width = 16 * 2 * 4 if target == "gradients" else 16 * 16 * 3  # 4x4 cells x (gx, gy) x 4 windows
    assert target_dim(target, 16) == width and mae.decoder_pred.out_features == width
    imgs = normalise(speckled_blobs(2))
    loss, pred, mask = mae(imgs)
    assert pred.shape == (2, 16, width) and mask.shape == (2, 16) and torch.isfinite(loss)
    target_t = mae.loss_target(imgs)
    assert target_t.shape == (2, 16, width) and target_t.dtype == torch.float32
    if target == "norm_pixels":  # standardised per patch
        torch.testing.assert_close(target_t.mean(-1), torch.zeros(2, 16), atol=1e-5, rtol=0)
        torch.testing.assert_close(target_t.var(-1), torch.ones(2, 16), atol=1e-3, rtol=0)


def test_vit_tiny_128px_gradient_target_dims():
    mae = build_mae({"size": "tiny", "img_size": 128, "decoder_embed_dim": 128, "decoder_depth": 1,
                     "decoder_num_heads": 4, "target": "gradients"})
    assert mae.decoder_pred.weight.shape == (128, 128)
    assert sar_gradient_target(torch.zeros(1, 3, 128, 128), 16).shape == (1, 64, 128)
    assert target_dim("gradients", 8) == 128 and target_dim("gradients", 14) == 2 * 2 * 8  # gcd(p, 4) cells a side


def test_only_decoder_pred_differs_between_targets():
    pixels, gradients = small_mae("pixels"), small_mae("gradients")
    a, b = pixels.state_dict(), gradients.state_dict()
    assert a.keys() == b.keys()
    assert [k for k in a if a[k].shape != b[k].shape] == ["decoder_pred.weight", "decoder_pred.bias"]
    ea, eb = pixels.encoder_state_dict(), gradients.encoder_state_dict()
    assert ea.keys() == eb.keys() and all(ea[k].shape == eb[k].shape for k in ea)
    pixels.load_state_dict(eb, strict=False)  # an encoder exported from one loads into the other


def test_gradient_target_layout_matches_per_patch_computation():
    """Token t = (patch row, patch col); inside it (cell row, cell col, feature) with cells of 4x4 pixels."""
    imgs = normalise(speckled_blobs(1, size=32, seed=3))
    target = sar_gradient_target(imgs, 16)
    feats = ratio_gradients(intensity(imgs))  # (1, 8, 32, 32)
    token = 1 * 2 + 0  # patch row 1, patch col 0
    vec = torch.stack([
        feats[0, f, 16 + 4 * cr : 16 + 4 * cr + 4, 4 * cc : 4 * cc + 4].mean()
        for cr in range(4) for cc in range(4) for f in range(8)
    ])
    torch.testing.assert_close(target[0, token], vec, atol=1e-5, rtol=1e-5)


def test_ratio_gradients_are_log_ratios_of_side_means():
    intens = torch.rand(1, 1, 20, 24) + 0.1
    g = ratio_gradients(intens, windows=(5,), eps=0.0)
    p = F.pad(intens, (2, 2, 2, 2), mode="replicate")[0, 0]  # pixel (i, j) is p[i + 2, j + 2]
    i, j = 7, 9
    left, right = p[i : i + 5, j : j + 2].mean(), p[i : i + 5, j + 3 : j + 5].mean()
    above, below = p[i : i + 2, j : j + 5].mean(), p[i + 3 : i + 5, j : j + 5].mean()
    torch.testing.assert_close(g[0, 0, i, j], (right / left).log(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g[0, 1, i, j], (below / above).log(), atol=1e-5, rtol=1e-5)
    flat = ratio_gradients(torch.full((1, 1, 32, 32), 0.3))
    assert flat.abs().max() < 1e-5  # no edge, no gradient


def test_global_intensity_gain_leaves_gradient_target_unchanged():
    intens = speckled_blobs(4, seed=1)
    for gain in (0.5, 0.25):
        # Exact without the log's eps; with the default eps (1e-3) only dark windows move a little.
        raw, scaled = ratio_gradients(intens, eps=0.0), ratio_gradients(intens * gain, eps=0.0)
        torch.testing.assert_close(scaled, raw, atol=1e-4, rtol=0)
        target = sar_gradient_target(normalise(intens), 16)
        target_scaled = sar_gradient_target(normalise(intens * gain), 16)
        moved = (target_scaled - target).abs().mean() / target.abs().mean()
        assert moved < 0.05  # relative to the target's own size
    # The tolerance is meaningful: another speckle draw of the same scenes moves the target far more.
    other = sar_gradient_target(normalise(speckled_blobs(4, seed=1, speckle_seed=1)), 16)
    assert (other - target).abs().mean() / target.abs().mean() > 0.2


@pytest.mark.parametrize("target", TARGETS)
def test_loss_counts_only_removed_patches(target):
    mae = small_mae(target)
    imgs = normalise(speckled_blobs(2))
    loss, pred, mask = mae(imgs, generator=torch.Generator().manual_seed(0))
    changed = pred.detach().clone()
    changed[mask == 0] += 10.0
    torch.testing.assert_close(mae.forward_loss(imgs, changed, mask), loss.detach(), rtol=1e-6, atol=0)
    changed[mask == 1] += 1.0
    assert mae.forward_loss(imgs, changed, mask) > loss + 0.5


def test_gradient_target_is_float32_without_grad_under_autocast():
    imgs = normalise(speckled_blobs(2)).requires_grad_(True)
    plain = sar_gradient_target(imgs, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = sar_gradient_target(imgs, 16)
    assert auto.dtype == torch.float32 and not auto.requires_grad
    torch.testing.assert_close(auto, plain)
    mae = small_mae("gradients")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = mae(imgs.detach())
    loss.backward()
    assert loss.dtype == torch.float32 and mae.decoder_pred.weight.grad is not None


@pytest.mark.parametrize("target", TARGETS)
def test_tiny_pretraining_lowers_each_loss(target):
    """40 AdamW steps on 8 speckled 64-px chips: the loss on a fixed mask falls clearly for every target."""
    mae = small_mae(target)
    imgs = normalise(speckled_blobs(8, seed=1))
    opt = torch.optim.AdamW(mae.parameters(), lr=2e-3, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(0)

    def held_out_mask_loss() -> float:
        with torch.no_grad():
            return mae(imgs, generator=torch.Generator().manual_seed(123))[0].item()

    start = held_out_mask_loss()
    for _ in range(40):
        loss = mae(imgs, generator=gen)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = held_out_mask_loss()
    print(f"{target}: loss {start:.3f} -> {end:.3f}")
    assert end < 0.85 * start, (target, start, end)


def test_target_config_errors_and_norm_pix_alias():
    choices = r"model.target='hog' is unknown; use one of pixels, norm_pixels, gradients"
    with pytest.raises(ConfigError, match=choices) as err:
        build_mae({**SMALL, "target": "hog"})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="norm_pix_loss=true .* disagrees with model.target=gradients") as err:
        build_mae({**SMALL, "target": "gradients", "norm_pix_loss": True})
    assert "\n" not in str(err.value)
    assert build_mae({**SMALL, "norm_pix_loss": True}).target == "norm_pixels"  # the old switch still works
    assert build_mae({**SMALL, "norm_pix_loss": True, "target": "norm_pixels"}).norm_pix_loss
    assert build_mae({**SMALL, "norm_pix_loss": False, "target": "gradients"}).target == "gradients"
    assert build_mae(dict(SMALL)).target == "pixels"
    with pytest.raises(ConfigError, match="in_chans=1"):
        build_mae({**SMALL, "target": "gradients", "in_chans": 1})


def test_config_default_is_pixels_and_gradients_needs_imagenet_normalisation():
    cfg = load_config("mae_vitb16_sardet100k")
    assert cfg["model"]["target"] == "pixels" and "norm_pix_loss" not in cfg["model"]
    cfg = load_config("mae_tiny", ["model.target=gradients", "data.std=[0.5,0.5,0.5]"])
    mae = small_mae("gradients")
    with pytest.raises(ConfigError, match="data.std"):
        check_target_normalisation(cfg, mae)
    check_target_normalisation(load_config("mae_tiny", ["data.mean=[0.485,0.456,0.406]"]), mae)
    check_target_normalisation(cfg, small_mae("pixels"))  # pixels do not care
