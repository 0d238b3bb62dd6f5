"""MaskedAutoencoder: reference patch layout, masking, loss, sin-cos table, timm compatibility."""

from __future__ import annotations

import time
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from sarmae.errors import ConfigError
from sarmae.models.mae import MaskedAutoencoder, build_mae

SMALL = dict(
    img_size=64,
    patch_size=16,
    embed_dim=32,
    depth=2,
    num_heads=2,
    decoder_embed_dim=16,
    decoder_depth=1,
    decoder_num_heads=2,
)


def small_mae(**kw) -> MaskedAutoencoder:
    torch.manual_seed(0)
    return MaskedAutoencoder(**{**SMALL, **kw})


def test_patchify_layout_and_inverse():
    mae = small_mae(img_size=32, patch_size=8)
    imgs = torch.randn(2, 3, 32, 32)
    patches = mae.patchify(imgs)
    assert patches.shape == (2, 16, 8 * 8 * 3)
    # Token (row 1, col 2) of a 4x4 grid is token 6; inside it (pi, qi, c) sits at (pi*p + qi)*3 + c.
    token = patches[1, 1 * 4 + 2]
    for pi in range(8):
        for qi in range(8):
            for c in range(3):
                assert token[(pi * 8 + qi) * 3 + c] == imgs[1, c, 8 + pi, 16 + qi]
    assert torch.equal(mae.unpatchify(patches), imgs)


def test_random_masking_counts_and_consistency():
    x = torch.randn(3, 256, 8)
    gen = torch.Generator().manual_seed(1)
    visible, mask, ids_restore = MaskedAutoencoder.random_masking(x, 0.75, generator=gen)
    assert visible.shape == (3, 64, 8)
    assert torch.equal(mask.sum(1), torch.full((3,), 192.0))
    assert not torch.equal(mask[0], mask[1]) and not torch.equal(mask[1], mask[2])
    for i in range(3):  # visible tokens are exactly the kept (mask 0) tokens, in image order
        assert torch.equal(visible[i], x[i][mask[i] == 0])
    ids_shuffle = torch.argsort(ids_restore, dim=1)  # shuffled order: kept first, then removed
    expected = torch.cat([torch.zeros(3, 64), torch.ones(3, 192)], dim=1)
    assert torch.equal(torch.gather(mask, 1, ids_shuffle), expected)
    again = MaskedAutoencoder.random_masking(x, 0.75, generator=torch.Generator().manual_seed(1))[1]
    assert torch.equal(again, mask)


def test_forward_shapes_and_loss_only_on_removed_patches():
    mae = small_mae()
    imgs = torch.randn(2, 3, 64, 64)
    loss, pred, mask = mae(imgs, generator=torch.Generator().manual_seed(0))
    assert pred.shape == (2, 16, 16 * 16 * 3) and mask.shape == (2, 16)
    assert mask.sum().item() == 2 * 12  # 16 tokens, ratio 0.75 -> 4 kept per image

    target = mae.patchify(imgs)
    manual = sum(((pred[n, t] - target[n, t]) ** 2).mean() for n in range(2) for t in range(16) if mask[n, t])
    assert torch.allclose(loss, manual / 24, rtol=1e-5)

    changed = pred.detach().clone()
    changed[mask == 0] += 10.0  # visible patches must not count
    assert torch.allclose(mae.forward_loss(imgs, changed, mask), loss, rtol=1e-6)
    changed[mask == 1] += 1.0
    assert not torch.allclose(mae.forward_loss(imgs, changed, mask), loss)


def test_norm_pix_loss_matches_numpy():
    mae = small_mae(norm_pix_loss=True)
    imgs, pred = torch.rand(2, 3, 64, 64), torch.randn(2, 16, 768)
    mask = (torch.rand(2, 16) > 0.5).float()
    t = mae.patchify(imgs).double().numpy()
    t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, ddof=1, keepdims=True) + 1e-6)
    per_patch = ((pred.double().numpy() - t) ** 2).mean(-1)
    expected = (per_patch * mask.numpy()).sum() / mask.numpy().sum()
    assert abs(mae.forward_loss(imgs, pred, mask).item() - expected) < 1e-5


def _mae_sincos_numpy(dim: int, grid: int) -> np.ndarray:
    """MAE's formula, written independently: first half encodes the column index, second the row."""

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2.0))
        out = np.outer(pos, omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    rows, cols = np.divmod(np.arange(grid * grid), grid)
    emb = np.concatenate([one_d(dim // 2, cols), one_d(dim // 2, rows)], axis=1)
    return np.concatenate([np.zeros((1, dim)), emb], axis=0)


def test_fixed_sincos_position_embeddings():
    mae = small_mae()
    assert not mae.pos_embed.requires_grad and not mae.decoder_pos_embed.requires_grad
    assert "pos_embed" in mae.state_dict() and "decoder_pos_embed" in mae.state_dict()
    np.testing.assert_allclose(mae.pos_embed[0].numpy(), _mae_sincos_numpy(32, 4), atol=1e-6)
    np.testing.assert_allclose(mae.decoder_pos_embed[0].numpy(), _mae_sincos_numpy(16, 4), atol=1e-6)


def test_encoder_export_matches_timm_features():
    mae = small_mae().eval()
    vit = VisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    vit.load_state_dict(mae.encoder_state_dict(), strict=True)
    imgs = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours, mask, _ = mae.forward_encoder(imgs, mask_ratio=0.0)
        theirs = vit.eval().forward_features(imgs)
    assert mask.sum() == 0
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_attention_uses_fused_sdpa():
    mae = small_mae()
    with mock.patch.object(F, "scaled_dot_product_attention", wraps=F.scaled_dot_product_attention) as sdpa:
        mae(torch.randn(1, 3, 64, 64))
    assert sdpa.call_count == SMALL["depth"] + SMALL["decoder_depth"]


def test_build_mae_sizes_overrides_and_errors():
    mae = build_mae({"size": "tiny", "depth": 2, "img_size": 64, "decoder_depth": 1, "mask_ratio": 0.5})
    assert mae.embed_dim == 192 and len(mae.blocks) == 2 and len(mae.decoder_blocks) == 1
    assert mae.mask_ratio == 0.5 and mae.pos_embed.shape == (1, 17, 192)
    with pytest.raises(ConfigError, match="model.decoder_width"):
        build_mae({"size": "tiny", "decoder_width": 3})
    with pytest.raises(ConfigError, match="img_size=100"):
        build_mae({"size": "tiny", "img_size": 100})
    with pytest.raises(ConfigError, match="mask_ratio"):
        build_mae({"size": "tiny", "mask_ratio": 1.0})


def test_paper_vit_base_one_training_step():
    """The paper's model: ViT-B encoder (~85.8 M params), 3x512 decoder, 256 px; one AdamW step on CPU."""
    start = time.perf_counter()
    mae = build_mae(
        {
            "size": "base",
            "img_size": 256,
            "patch_size": 16,
            "decoder_embed_dim": 512,
            "decoder_depth": 3,
            "decoder_num_heads": 16,
            "mask_ratio": 0.75,
            "norm_pix_loss": False,
        }
    )
    encoder = sum(v.numel() for v in mae.encoder_state_dict().values())
    assert 85.7e6 < encoder < 85.9e6
    opt = torch.optim.AdamW([p for p in mae.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95))
    before = mae.blocks[0].attn.qkv.weight.detach().clone()
    loss, pred, mask = mae(torch.rand(2, 3, 256, 256))
    assert mask.shape == (2, 256) and mask.sum().item() == 2 * 192 and pred.shape == (2, 256, 768)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, mae.blocks[0].attn.qkv.weight)
    assert mae.pos_embed.grad is None
    print(f"ViT-B MAE build + one step: {time.perf_counter() - start:.1f} s")
