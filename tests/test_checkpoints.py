"""Checkpoint reading (untrusted files), pos-embed resizing, encoder/full-MAE round trips, load reports."""

from __future__ import annotations

import argparse
import os

import pytest
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

from sarmae.errors import CheckpointError
from sarmae.models.checkpoints import (
    LoadReport,
    interpolate_pos_embed,
    load_encoder_weights,
    load_reference_mae,
    open_checkpoint,
    read_state_dict,
    save_encoder_safetensors,
    save_reference_mae,
)
from sarmae.models.mae import MaskedAutoencoder
from sarmae.models.vit import resize_pos_embed

TINY = dict(
    patch_size=16, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2
)


def tiny_mae(img_size: int = 64, seed: int = 0, **kw) -> MaskedAutoencoder:
    torch.manual_seed(seed)
    return MaskedAutoencoder(img_size=img_size, **{**TINY, **kw})


def assert_same_encoder(a: MaskedAutoencoder, b: MaskedAutoencoder, skip=("pos_embed",)) -> None:
    sa, sb = a.encoder_state_dict(), b.encoder_state_dict()
    for key in sa:
        if key not in skip:
            assert torch.equal(sa[key], sb[key]), key


def test_interpolate_pos_embed_keeps_cls_and_constants():
    pos = torch.cat([torch.full((1, 1, 8), 7.0), torch.full((1, 196, 8), 0.5)], dim=1)
    out = interpolate_pos_embed(pos, 16)
    assert out.shape == (1, 257, 8)
    assert torch.equal(out[:, 0], pos[:, 0])
    torch.testing.assert_close(out[:, 1:], torch.full((1, 256, 8), 0.5))
    assert interpolate_pos_embed(pos, 14) is pos
    ramp = torch.arange(16.0).reshape(1, 16, 1).expand(1, 16, 2)  # 4x4 grid, no extra tokens
    down = interpolate_pos_embed(ramp, 2, num_extra_tokens=0)
    assert down.shape == (1, 4, 2) and down[0, 0, 0] < down[0, 1, 0] < down[0, 2, 0] < down[0, 3, 0]
    with pytest.raises(CheckpointError, match="square grid"):
        interpolate_pos_embed(torch.zeros(1, 200, 8), 16)


def test_official_encoder_format_loads_into_256px_model(tmp_path):
    src = tiny_mae(img_size=224, seed=1)  # pos_embed (1, 197, 32), like mae_pretrain_vit_base.pth
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": src.encoder_state_dict()}, path)
    dst = tiny_mae(img_size=256, seed=2)
    report = load_encoder_weights(dst, path)
    assert sorted(report.loaded) == sorted(src.encoder_state_dict())
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert "pos_embed resized 14x14->16x16" in report.summary()
    assert_same_encoder(src, dst)
    torch.testing.assert_close(dst.pos_embed.data, interpolate_pos_embed(src.pos_embed.data, 16))
    assert not torch.equal(dst.decoder_embed.weight, src.decoder_embed.weight)  # decoder untouched


def test_full_reference_mae_round_trip(tmp_path):
    src = tiny_mae(seed=3, norm_pix_loss=True)
    path = save_reference_mae(src, tmp_path / "run" / "mae_full.pth")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model"}
    keys = set(raw["model"])
    for key in (
        "mask_token",
        "decoder_embed.weight",
        "decoder_pos_embed",
        "decoder_blocks.0.attn.qkv.weight",
        "decoder_norm.weight",
        "decoder_pred.bias",
        "cls_token",
        "norm.weight",
    ):
        assert key in keys
    dst = tiny_mae(seed=4, norm_pix_loss=True)
    report = load_reference_mae(path, dst)
    assert sorted(report.loaded) == sorted(src.state_dict()) and not (report.missing or report.unexpected)
    imgs = torch.rand(2, 3, 64, 64)
    out_src = src(imgs, generator=torch.Generator().manual_seed(0))
    out_dst = dst(imgs, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out_src[0], out_dst[0]) and torch.equal(out_src[1], out_dst[1])
    # The same full checkpoint feeds an encoder load: decoder keys are reported, not loaded.
    enc_report = load_encoder_weights(tiny_mae(seed=5), path)
    assert "mask_token" in enc_report.unexpected and "decoder_pred.weight" in enc_report.unexpected
    assert enc_report.missing == []


def test_training_checkpoint_with_args_lightning_and_ddp_wrappers(tmp_path):
    src = tiny_mae(seed=6)
    sd = src.state_dict()
    official = tmp_path / "checkpoint-399.pth"  # main_pretrain.py also pickles argparse args
    torch.save({"model": sd, "epoch": 399, "args": argparse.Namespace(blr=1.5e-4)}, official)
    assert read_state_dict(official).keys() == sd.keys()
    lightning = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3, "global_step": 9}, lightning)
    assert read_state_dict(lightning).keys() == sd.keys()
    ddp = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in sd.items()}, ddp)
    assert read_state_dict(ddp).keys() == sd.keys()


def test_timm_state_dict_reports_head_as_unexpected():
    torch.manual_seed(7)
    vit = VisionTransformer(
        img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=5, global_pool="avg"
    )
    dst = tiny_mae(seed=8)
    report = load_encoder_weights(dst, vit.state_dict())
    assert sorted(report.unexpected) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert sorted(report.missing) == ["norm.bias", "norm.weight"]  # avg-pool timm ViTs have fc_norm, no norm
    assert torch.equal(dst.blocks[1].mlp.fc2.weight, vit.blocks[1].mlp.fc2.weight)
    assert isinstance(report, LoadReport) and "unexpected 4" in str(report)


def test_detector_prefix_is_found_and_other_modules_loadable():
    src = tiny_mae(seed=9)
    detector = {f"backbone.vit.{k}": v for k, v in src.encoder_state_dict().items() if k not in ("cls_token",)}
    detector["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(3, 4)
    dst = tiny_mae(seed=10)
    report = load_encoder_weights(dst, detector)
    assert report.missing == ["cls_token"] and report.unexpected == []
    assert_same_encoder(src, dst, skip=("cls_token",))
    # A ViTDet-like module without cls_token/norm but with extra rel-pos tables and a cls-free pos_embed.
    vit = torch.nn.Module()
    vit.patch_embed, vit.blocks = tiny_mae(seed=11).patch_embed, tiny_mae(seed=11).blocks
    vit.pos_embed = torch.nn.Parameter(torch.zeros(1, 64, 32))  # 8x8 grid, no cls row
    vit.blocks[0].attn.rel_pos_h = torch.nn.Parameter(torch.zeros(7, 16))
    report = load_encoder_weights(vit, src.encoder_state_dict())
    assert report.missing == ["blocks.0.attn.rel_pos_h"]
    assert sorted(report.unexpected) == ["cls_token", "norm.bias", "norm.weight"]
    assert "pos_embed resized 4x4->8x8" in report.summary()
    torch.testing.assert_close(vit.pos_embed.data, interpolate_pos_embed(src.pos_embed.data, 8)[:, 1:])


def test_wrong_architecture_gives_clear_error(tmp_path):
    wide = tiny_mae(embed_dim=64)
    with pytest.raises(CheckpointError, match="embed dim 64.*model has 32"):
        load_encoder_weights(tiny_mae(), wide.encoder_state_dict())
    with pytest.raises(CheckpointError, match="4 transformer blocks, model has 2"):
        load_encoder_weights(tiny_mae(), tiny_mae(depth=4).encoder_state_dict())
    with pytest.raises(CheckpointError, match="no ViT encoder weights"):
        load_encoder_weights(tiny_mae(), {"conv1.weight": torch.zeros(8, 3, 7, 7)})
    path = save_reference_mae(tiny_mae(decoder_embed_dim=32), tmp_path / "wide_decoder.pth")
    with pytest.raises(CheckpointError, match="decoder_embed_dim"):
        load_reference_mae(path, tiny_mae())


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_unreadable_or_unsafe_files_raise_checkpoint_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        read_state_dict(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        read_state_dict(tmp_path / "junk.pth")
    torch.save({"model": {"w": torch.zeros(1)}, "x": _Exploit()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError) as info:
        read_state_dict(tmp_path / "evil.pth")
    assert "\n" not in str(info.value) and not (tmp_path / "pwned").exists()
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        read_state_dict(tmp_path / "bad.safetensors")


def test_encoder_safetensors_export(tmp_path):
    src = tiny_mae(seed=12)
    path = save_encoder_safetensors(src, tmp_path / "weights" / "encoder.safetensors")
    assert sorted(p.name for p in path.parent.iterdir()) == ["encoder.safetensors"]  # no tmp file left
    tensors = load_file(str(path))
    assert tensors.keys() == src.encoder_state_dict().keys()
    assert not any(k.startswith(("decoder", "mask_token")) for k in tensors)
    dst = tiny_mae(seed=13)
    report = load_encoder_weights(dst, path)
    assert sorted(report.loaded) == sorted(tensors) and not report.missing
    assert_same_encoder(src, dst, skip=())


def test_one_pos_embed_resizer_equals_timm():
    """Checkpoint loading and the ViTDet forward share models.vit.resize_pos_embed: timm's bicubic resampling."""
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(14)
    pos = torch.randn(1, 1 + 14 * 14, 8)
    for new in ((16, 16), (50, 30), (7, 9)):
        want = resample_abs_pos_embed(pos, new_size=list(new), old_size=[14, 14], num_prefix_tokens=1, antialias=False)
        assert torch.equal(resize_pos_embed(pos, new, (14, 14), num_prefix_tokens=1), want)
        grid_only = resample_abs_pos_embed(pos[:, 1:], new_size=list(new), old_size=[14, 14], num_prefix_tokens=0,
                                           antialias=False)
        assert torch.equal(resize_pos_embed(pos[:, 1:], new, (14, 14)), grid_only)
    assert torch.equal(interpolate_pos_embed(pos, 16), resize_pos_embed(pos, (16, 16), (14, 14), 1))
    assert resize_pos_embed(pos, (14, 14), (14, 14), 1) is pos
    half = resize_pos_embed(pos.bfloat16(), (16, 16), (14, 14), 1)  # computed in float32, cast back
    assert half.dtype == torch.bfloat16


class _Payload:  # a plain importable class: refused by weights_only, harmless if it ever were loaded
    def __init__(self) -> None:
        self.x = 1


@pytest.mark.parametrize("legacy", [True, False])
def test_pickle_with_python_objects_is_refused_with_our_line(tmp_path, legacy):
    """Legacy (non-zip) and zip torch pickles holding objects: one CheckpointError line naming the file and why,
    never torch's unpickling advice or its mmap message, whichever reader opens the file."""
    import pickle

    from sarmae.infer.detector_io import load_detector

    path = tmp_path / "old.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "meta": _Payload()}, path, _use_new_zipfile_serialization=not legacy)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=4))
    for reader in (read_state_dict, lambda p: open_checkpoint(p, mmap=True), load_detector):
        for file in (path, plain):
            with pytest.raises(CheckpointError) as info:
                reader(file)
            message = str(info.value)
            assert "\n" not in message and str(file) in message, message
            assert "untrusted pickles are not loaded" in message and "re-save" in message and "safetensors" in message
            assert "mmap" not in message and "Weights only load failed" not in message
    with pytest.raises(CheckpointError, match="_Payload"):
        read_state_dict(path)


def test_legacy_format_state_dict_loads_even_when_memory_mapped(tmp_path):
    sd = tiny_mae(seed=15).encoder_state_dict()
    path = tmp_path / "legacy.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    opened = open_checkpoint(path, mmap=True)  # mmap needs the zip format: read normally instead
    assert opened.keys() == sd.keys() and all(torch.equal(opened[k], sd[k]) for k in sd)
    with pytest.raises(CheckpointError, match="no such file; check the path"):
        open_checkpoint(tmp_path / "nope.pth")
