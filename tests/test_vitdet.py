"""ViTDet detector: ViT backbone tweaks, Simple FPN, torchvision Faster R-CNN wiring, MAE weight transfer."""

from __future__ import annotations

import math
import time

import pytest
import torch
from timm.models.vision_transformer_sam import window_partition, window_unpartition

from sarmae.errors import ConfigError
from sarmae.models.checkpoints import load_encoder_weights
from sarmae.models.mae import MaskedAutoencoder
from sarmae.models.vit import vit_size
from sarmae.models.vitdet import (
    DETECTOR_KEYS,
    SimpleFeaturePyramid,
    ViTDetBackbone,
    build_detector,
    build_vitdet,
    default_global_blocks,
    param_groups,
)

TINY = vit_size("tiny")  # embed 192, depth 6, heads 3
# Few proposals / RoIs and a narrow pyramid: the 4-conv box head and the stride-4 level dominate CPU time.
FAST = dict(rpn_post_nms_top_n_train=64, rpn_post_nms_top_n_test=32, box_batch_size_per_image=32, fpn_channels=64)


def tiny_backbone(**kw) -> ViTDetBackbone:
    return ViTDetBackbone(**{"img_size": 256, "drop_path": 0.0, **TINY, **kw})


def tiny_detector(num_classes: int = 3, **kw):
    torch.manual_seed(0)
    return build_vitdet(num_classes, size="tiny", img_size=256, **{**FAST, **kw})


def test_window_partition_round_trip_with_padding():
    x = torch.randn(2, 17, 23, 8)  # neither side divisible by the window
    windows, (hp, wp) = window_partition(x, 7)
    assert (hp, wp) == (21, 28)
    assert windows.shape == (2 * 3 * 4, 7, 7, 8)
    # The last window row/column holds the zero padding.
    assert torch.count_nonzero(windows.view(2, 3, 4, 7, 7, 8)[:, 2, :, 3:]) == 0
    assert torch.equal(window_unpartition(windows, 7, (17, 23), (hp, wp)), x)


def test_default_global_blocks_are_last_of_each_quarter():
    assert default_global_blocks(12) == (2, 5, 8, 11)
    assert default_global_blocks(24) == (5, 11, 17, 23)
    assert default_global_blocks(32) == (7, 15, 23, 31)


def test_pos_embed_resized_from_pretraining_grid():
    vit = tiny_backbone(pretrain_img_size=256)
    assert vit.pos_embed.shape == (1, 1 + 16 * 16, 192)
    assert vit.pos_embed.requires_grad
    assert vit.abs_pos(50, 50).shape == (1, 50, 50, 192)
    assert vit.abs_pos(50, 30).shape == (1, 50, 30, 192)
    # Same grid: identity, cls row dropped, row-major layout.
    assert torch.equal(vit.abs_pos(16, 16), vit.pos_embed[:, 1:].reshape(1, 16, 16, 192))
    # The cls row never leaks into the grid, and bicubic keeps a constant field constant.
    with torch.no_grad():
        vit.pos_embed.fill_(0.5)
        vit.pos_embed[:, 0] = 1000.0
    torch.testing.assert_close(vit.abs_pos(50, 50), torch.full((1, 50, 50, 192), 0.5))


def test_backbone_shapes_blocks_and_init():
    vit = tiny_backbone(img_size=800, drop_path=0.1).eval()
    with torch.no_grad():
        assert vit(torch.rand(1, 3, 800, 800)).shape == (1, 192, 50, 50)
        assert vit(torch.rand(2, 3, 320, 192)).shape == (2, 192, 20, 12)
    assert [b.window_size for b in vit.blocks] == [0, 14, 0, 0, 14, 0]  # global: (0, 2, 3, 5) for depth 6
    # Window blocks: (2*14-1, head_dim) tables; global blocks: sized for the full 50x50 grid.
    assert vit.blocks[1].attn.rel_pos_h.shape == (27, 64)
    assert vit.blocks[2].attn.rel_pos_w.shape == (99, 64)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in vit.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.1, 6))
    keys = set(vit.state_dict())
    assert {"patch_embed.proj.weight", "pos_embed", "blocks.5.mlp.fc2.bias"} <= keys
    assert not any(k.startswith(("cls_token", "norm.")) for k in keys)
    assert vit.blocks[0].norm1.eps == 1e-6
    assert abs(vit.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.003


def test_zero_rel_pos_equals_attention_without_rel_pos():
    torch.manual_seed(0)
    with_rel = tiny_backbone(img_size=128, window_size=4).eval()
    plain = tiny_backbone(img_size=128, window_size=4, use_rel_pos=False).eval()
    result = plain.load_state_dict(with_rel.state_dict(), strict=False)
    assert result.missing_keys == [] and all("rel_pos" in k for k in result.unexpected_keys)
    assert all(p.abs().sum() == 0 for n, p in with_rel.named_parameters() if "rel_pos" in n)
    x = torch.rand(2, 3, 128, 96)
    with torch.no_grad():
        torch.testing.assert_close(with_rel(x), plain(x))
        with_rel.blocks[2].attn.rel_pos_h.normal_()  # a trained table does change the output
        assert not torch.allclose(with_rel(x), plain(x))


def test_simple_feature_pyramid_levels():
    fpn = SimpleFeaturePyramid(tiny_backbone(), out_channels=256).eval()
    assert fpn.out_channels == 256
    with torch.no_grad():
        feats = fpn(torch.rand(1, 3, 256, 128))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    for stride, f in zip((4, 8, 16, 32, 64), feats.values(), strict=True):
        assert f.shape == (1, 256, 256 // stride, 128 // stride)
    # Stride 4: C -> C/2 -> C/4 channels; stride 8: C -> C/2; then 1x1 conv to 256.
    assert [fpn.stages[0][0].out_channels, fpn.stages[0][3].out_channels] == [96, 48]
    assert fpn.stages[1][0].out_channels == 96 and fpn.stages[2][0][0].in_channels == 192


def test_paper_config_anchors_match_feature_maps():
    torch.manual_seed(0)
    paper = build_vitdet(11)  # ViT-B, 800x800
    n_vit = sum(p.numel() for p in paper.backbone.vit.parameters())
    n_all = sum(p.numel() for p in paper.parameters())
    assert 85e6 < n_vit < 87e6 and 100e6 < n_all < 115e6
    assert paper.roi_heads.box_predictor.cls_score.out_features == 11
    assert paper.rpn._post_nms_top_n["training"] == 1000
    # Same pyramid geometry with a tiny ViT, to keep the test fast.
    model = build_vitdet(11, size="tiny", img_size=800, fpn_channels=32).eval()
    images, _ = model.transform([torch.rand(3, 600, 1000)])
    assert images.tensors.shape[-2:] == (832, 832)  # 800 resized, padded to /64
    with torch.no_grad():
        feats = model.backbone(images.tensors)
    anchors = model.rpn.anchor_generator(images, list(feats.values()))[0]
    sizes = [f.shape[-2] * f.shape[-1] for f in feats.values()]
    assert anchors.shape[0] == 3 * sum(sizes)
    for level, (stride, f) in enumerate(zip((4, 8, 16, 32, 64), feats.values(), strict=True)):
        start = 3 * sum(sizes[:level])
        level_anchors = anchors[start : start + 3 * sizes[level]]
        centers_x = ((level_anchors[:, 0] + level_anchors[:, 2]) / 2).unique()
        assert f.shape[-1] == 832 // stride
        torch.testing.assert_close(centers_x.diff(), torch.full_like(centers_x.diff(), float(stride)))
        side = (level_anchors[:, 2:] - level_anchors[:, :2]).prod(1).sqrt()
        torch.testing.assert_close(side, torch.full_like(side, 8.0 * stride), atol=1.0, rtol=0.02)


def test_tiny_detector_trains_with_an_empty_image():
    model = tiny_detector().train()
    images = [torch.rand(3, 200, 300), torch.rand(3, 256, 256)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 120.0, 150.0], [200.0, 30.0, 290.0, 90.0]]),
         "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]  # fmt: skip
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grad = model.backbone.vit.blocks[0].attn.qkv.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_eval_returns_boxes_in_original_image_coordinates():
    model = tiny_detector(score_thresh=0.0).eval()
    image = torch.rand(3, 400, 200)  # H=400, W=200; the model works at 256x256
    with torch.no_grad():
        out = model([image])[0]
        # The same detections before postprocess, in the 256x256 working frame.
        images, _ = model.transform([image])
        feats = model.backbone(images.tensors)
        proposals, _ = model.rpn(images, feats)
        raw, _ = model.roi_heads(feats, proposals, images.image_sizes)
    assert images.image_sizes == [(256, 256)] and len(out["boxes"]) > 0
    scale = torch.tensor([200 / 256, 400 / 256, 200 / 256, 400 / 256])
    torch.testing.assert_close(out["boxes"], raw[0]["boxes"] * scale)
    assert out["boxes"][:, 2].max() <= 200 and out["boxes"][:, 3].max() <= 400
    assert out["boxes"][:, 3].max() > 256  # not stuck in the working frame
    assert out["labels"].dtype == torch.int64 and out["labels"].min() >= 1


def test_mae_encoder_weights_land_in_backbone():
    mae = MaskedAutoencoder(img_size=256, **TINY, decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=4)
    encoder = mae.encoder_state_dict()
    model = tiny_detector(pretrain_img_size=256)
    vit = model.backbone.vit
    report = load_encoder_weights(vit, encoder)
    unused = {"cls_token", "norm.weight", "norm.bias"}
    assert set(report.loaded) == set(encoder) - unused
    assert set(report.unexpected) == unused
    assert report.mismatched == []
    rel_pos = {k for k in vit.state_dict() if k.endswith(("rel_pos_h", "rel_pos_w"))}
    assert set(report.missing) == rel_pos and len(rel_pos) == 2 * 6
    state = model.state_dict()
    for key in set(encoder) - unused:
        assert torch.equal(state[f"backbone.vit.{key}"], encoder[key]), key


def test_param_groups_layer_decay():
    model = tiny_detector()
    lr, wd, d, depth = 1e-4, 0.1, 0.7, 6
    groups = param_groups(model, lr, wd, layer_decay=d)
    owner = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(owner) == len(named) == sum(len(g["params"]) for g in groups)
    for g in groups:
        assert g["lr"] == pytest.approx(lr * g["lr_scale"])
    expected = {
        "backbone.vit.patch_embed.proj.weight": (d ** (depth + 1), wd),
        "backbone.vit.pos_embed": (d ** (depth + 1), 0.0),
        "backbone.vit.blocks.0.attn.qkv.weight": (d**depth, wd),
        "backbone.vit.blocks.5.mlp.fc1.bias": (d, 0.0),
        "backbone.vit.blocks.2.attn.rel_pos_h": (d ** (depth - 2), 0.0),
        "backbone.vit.blocks.3.norm1.weight": (d ** (depth - 3), 0.0),
        "backbone.stages.0.0.weight": (1.0, wd),
        "roi_heads.box_head.0.1.weight": (1.0, 0.0),  # LayerNorm2d in the box head
        "roi_heads.box_predictor.cls_score.weight": (1.0, wd),
    }
    for name, (scale, decay) in expected.items():
        group = owner[id(named[name])]
        assert group["lr_scale"] == pytest.approx(scale), name
        assert group["weight_decay"] == decay, name
    flat = param_groups(model, lr, wd, layer_decay=None)
    assert {g["lr_scale"] for g in flat} == {1.0} and len(flat) == 2


def test_build_detector_from_config():
    cfg = {"size": "tiny", "img_size": 320, "pretrain_img_size": 224, "window_size": 7,
           "global_blocks": [1, 4], "drop_path": 0.2, "score_thresh": 0.1, "nms_thresh": 0.6,
           "detections_per_img": 50, "rpn_post_nms_top_n_train": 500}  # fmt: skip
    model = build_detector(cfg, num_classes=4)
    vit = model.backbone.vit
    assert [b.window_size == 0 for b in vit.blocks] == [i in (1, 4) for i in range(6)]
    assert vit.pos_embed.shape == (1, 1 + 14 * 14, 192)
    assert model.transform.fixed_size == (320, 320) and model.transform.size_divisible == 64
    assert model.roi_heads.score_thresh == 0.1 and model.roi_heads.nms_thresh == 0.6
    assert model.roi_heads.detections_per_img == 50 and model.rpn._post_nms_top_n["training"] == 500
    assert "fpn_channels" in DETECTOR_KEYS and "num_classes" not in DETECTOR_KEYS
    with pytest.raises(ConfigError, match="model.window"):
        build_detector({"window": 14}, num_classes=4)
    with pytest.raises(ConfigError, match="background"):
        build_detector({"size": "tiny"}, num_classes=1)
    with pytest.raises(ConfigError, match="global_blocks"):
        build_detector({"size": "tiny", "global_blocks": [6]}, num_classes=4)
    with pytest.raises(ConfigError, match="model.size"):
        build_detector({"size": "giant"}, num_classes=4)


@pytest.mark.slow
def test_paper_config_one_training_step():
    torch.manual_seed(0)
    model = build_vitdet(11).train()  # ViT-B, 800x800, the full RPN/RoI sampling budgets
    image = torch.rand(3, 800, 800)
    target = {"boxes": torch.tensor([[100.0, 120.0, 260.0, 300.0]]), "labels": torch.tensor([3])}
    start = time.perf_counter()
    losses = model([image], [target])
    sum(losses.values()).backward()
    elapsed = time.perf_counter() - start
    assert all(math.isfinite(v.item()) for v in losses.values())
    assert model.backbone.vit.patch_embed.proj.weight.grad.abs().sum() > 0
    print(f"ViT-B 800x800 training step on CPU: {elapsed:.1f} s")
