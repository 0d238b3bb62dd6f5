"""ViTDet: a plain MAE-pretrained ViT + Simple Feature Pyramid + torchvision Faster R-CNN.

The ViT is the MAE encoder with detection tweaks (Li et al., 2022, detectron2's ViTDet): no cls token, no
final norm, window attention (14x14) everywhere except the last block of each quarter, decomposed relative
positions (zero-initialised, so a freshly loaded MAE encoder computes exactly its pre-training attention)
and the pre-training ``pos_embed`` resized on the fly. Attribute names equal the MAE encoder's, so its
weights load 1:1 into ``backbone.vit`` (only ``rel_pos_h/w`` are new, ``cls_token``/``norm`` unused).

Shapes for the paper config (ViT-B, ``img_size=800``), batch B::

    images  list of B x (3, H_i, W_i) float in [0, 1], any size
    GeneralizedRCNNTransform: normalise, resize to 800x800 (aspect NOT kept), zero-pad to /64 -> (B,3,832,832)
    ViTDetBackbone     (B,3,832,832) -> patch_embed (B,52,52,768) + pos_embed (1,1+16*16,768) resized
                       to (1,52,52,768) -> 12 blocks (windows 14x14 on a 56x56 zero-padded grid; blocks 2,5,8,11
                       global) -> (B,768,52,52), stride 16
    SimpleFeaturePyramid  '0' (B,256,208,208) s4 | '1' (B,256,104,104) s8 | '2' (B,256,52,52) s16
                          | '3' (B,256,26,26) s32 | 'pool' (B,256,13,13) s64
    RPN        5 levels x 3 anchors (sizes 32..512 = 8 x stride, ratios 0.5/1/2), 2 convs;
               1000 post-NMS proposals per image in training and test
    RoI heads  MultiScaleRoIAlign '0'-'3' -> (R,256,7,7) -> 4 x [3x3 conv + LN + ReLU] -> fc 1024
               -> (R, num_classes) scores, (R, 4*num_classes) box deltas
    output     train: dict of 4 losses; eval: B x {boxes (N,4) xyxy in ORIGINAL image pixels, labels, scores}

Padding to /64 (not torchvision's /32) keeps every level an exact power-of-two stride: 800/64 is not an
integer, and torchvision's AnchorGenerator infers strides as ``padded_size // feature_size`` (800 // 13 = 61).
Differences to detectron2 kept on purpose: RoIAlign uses torchvision's ``aligned=False`` (MultiScaleRoIAlign
does not expose ``aligned``), box/RPN regression losses are torchvision's smooth-L1 (beta 1/9), not L1.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer_sam import Attention, Block, get_rel_pos
from torch import nn
from torchvision.models.convnext import LayerNorm2d
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import Conv2dNormActivation, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from sarmae.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sarmae.errors import CheckpointError, ConfigError
from sarmae.models.checkpoints import LoadReport, load_encoder_weights
from sarmae.models.vit import resize_pos_embed, vit_size

# ViT tensors a pre-trained encoder does not have: ViTDet's relative position tables (zero-initialised).
NEW_IN_VITDET = ("rel_pos_h", "rel_pos_w")
# Largest pyramid stride: the padded input must be a multiple of it for exact anchor strides.
MAX_STRIDE = 64

# Channels-first LayerNorm with ViTDet's eps, for the pyramid and the box head.
ln2d = partial(LayerNorm2d, eps=1e-6)


def default_global_blocks(depth: int) -> tuple[int, ...]:
    """The last block of each quarter: (2,5,8,11) for depth 12, (5,11,17,23) for 24, as in ViTDet."""
    return tuple(sorted({(q + 1) * depth // 4 - 1 for q in range(4)} - {-1}))


def rel_pos_bias(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
                 ) -> torch.Tensor:
    """Decomposed relative-position bias (MViTv2 / ViTDet) for queries ``q`` (B, h*w, C) -> (B, h*w, h*w).

    The values of timm's ``get_decomposed_rel_pos_bias`` (same einsums, then ``rel_h[.., kh] + rel_w[.., kw]``),
    bit for bit in float32 and bf16, but the broadcast sum is written as one matrix product with a one-hot
    key-position matrix: each output is 1 * rel_h + 1 * rel_w accumulated in float32 and rounded once, exactly
    what the elementwise add does. A GEMM writes the (h*w)^2 result at memory speed; timm's strided broadcast
    add (plus the copy of its permuted result) took 3-10x longer. For a 52x52 global block the bias is
    12 x 2704^2 values, the largest tensor of the backbone.
    """
    h, w = size
    batch, _, dim = q.shape
    r_q = q.reshape(batch, h, w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, rel_pos_h))  # (B, h, w, key row)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, rel_pos_w))  # (B, h, w, key column)
    rel = torch.cat([rel_h, rel_w], dim=-1).reshape(batch, h * w, h + w)
    key_row = torch.eye(h, dtype=rel.dtype, device=rel.device).repeat_interleave(w, dim=0)  # (h*w, h)
    key_col = torch.eye(w, dtype=rel.dtype, device=rel.device).repeat(h, 1)  # (h*w, w)
    return rel @ torch.cat([key_row, key_col], dim=1).T


class ViTDetAttention(Attention):
    """timm's SAM/ViTDet attention with the rel-pos bias of :func:`rel_pos_bias`, always through SDPA.

    Same parameters and names as timm's ``Attention`` (instances are converted in place, so construction, RNG
    use and state-dict keys stay timm's); only the forward differs. The bias is SDPA's additive float mask: CPU
    and CUDA fused kernels add it to float32 scores, so the softmax never sees bf16-rounded logits.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, h, w, _ = x.shape
        n = h * w
        qkv = self.qkv(x.reshape(batch, n, -1)).view(batch, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, batch * self.num_heads, n, -1).unbind(0)  # (B*heads, n, head_dim) each
        bias = rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w)) if self.use_rel_pos else None
        dropout = self.attn_drop.p if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        x = x.view(batch, self.num_heads, n, -1).transpose(1, 2).reshape(batch, n, -1)
        return self.proj_drop(self.proj(x)).view(batch, h, w, -1)


class ViTDetBackbone(nn.Module):
    """Plain ViT over (B,3,H,W) -> (B,C,H/16,W/16); H, W any multiples of ``patch_size``.

    ``img_size`` only sizes the global blocks' rel-pos tables (other grids interpolate them, like
    detectron2). ``pos_embed`` stays at the pre-training grid with its cls row, (1, 1+(P/16)^2, C), so an MAE
    checkpoint loads unchanged; each forward drops the cls row and resizes it bicubically to the input grid.
    """

    def __init__(
        self,
        img_size: int = 800,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        window_size: int = 14,
        global_blocks: Sequence[int] | None = None,
        use_rel_pos: bool = True,
        drop_path: float = 0.1,
        pretrain_img_size: int = 256,
    ) -> None:
        super().__init__()
        global_blocks = default_global_blocks(depth) if global_blocks is None else tuple(global_blocks)
        self.patch_size, self.embed_dim, self.depth = patch_size, embed_dim, depth
        self.global_blocks = global_blocks
        self.pretrain_grid = pretrain_img_size // patch_size
        grid = img_size // patch_size

        self.patch_embed = PatchEmbed(
            img_size, patch_size, in_chans, embed_dim, output_fmt="NHWC", strict_img_size=False
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.pretrain_grid**2, embed_dim))
        rates = torch.linspace(0, drop_path, depth).tolist()  # linear stochastic depth 0 -> drop_path
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias=True,
                drop_path=rates[i],
                norm_layer=norm_layer,
                use_rel_pos=use_rel_pos,
                window_size=0 if i in global_blocks else window_size,
                input_size=(grid, grid),  # the Block uses (window, window) itself for window blocks
            )
            for i in range(depth)
        )
        for block in self.blocks:
            block.attn.__class__ = ViTDetAttention  # same state, faster rel-pos bias
        self.init_weights()

    def init_weights(self) -> None:
        """ViTDet's scratch init; timm already zero-initialises the rel-pos tables, left untouched."""
        trunc_normal_(self.pos_embed, std=0.02)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def abs_pos(self, h: int, w: int) -> torch.Tensor:
        """Pre-training pos_embed without its cls row, resized to an (h, w) grid -> (1, h, w, C)."""
        g = self.pretrain_grid
        pos = resize_pos_embed(self.pos_embed[:, 1:], (h, w), (g, g))
        return pos.reshape(1, h, w, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/p, W/p)."""
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"ViTDetBackbone input {h}x{w} is not a multiple of the patch size {self.patch_size}")
        x = self.patch_embed(x)  # (B, h, w, C)
        x = x + self.abs_pos(x.shape[1], x.shape[2]).to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return x.permute(0, 3, 1, 2)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's Simple FPN: strides 4, 8, 16, 32 (+64 by max-pool) from the single stride-16 ViT map.

    (B, C, h, w) image features -> OrderedDict '0' (B,256,4h,4w), '1' (2h,2w), '2' (h,w), '3' (h/2,w/2),
    'pool' (h/4,w/4). Each branch: resampling (C -> C/4, C/2, C, C channels), 1x1 conv + LN, 3x3 conv + LN,
    no activation, no bias (LN follows).
    """

    def __init__(self, vit: ViTDetBackbone, out_channels: int = 256) -> None:
        super().__init__()
        self.vit = vit
        self.out_channels = out_channels
        dim = vit.embed_dim
        resample: list[list[nn.Module]] = [
            [
                nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
                ln2d(dim // 2),
                nn.GELU(),
                nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2),
            ],
            [nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)],
            [],
            [nn.MaxPool2d(2, stride=2)],
        ]
        widths = (dim // 4, dim // 2, dim, dim)
        self.stages = nn.ModuleList(
            nn.Sequential(
                *layers,
                Conv2dNormActivation(width, out_channels, 1, norm_layer=ln2d, activation_layer=None),
                Conv2dNormActivation(out_channels, out_channels, 3, norm_layer=ln2d, activation_layer=None),
            )
            for layers, width in zip(resample, widths, strict=True)
        )
        self.top_block = LastLevelMaxPool()  # 'pool' = max_pool2d(kernel 1, stride 2) of the last level
        for module in self.stages.modules():
            if isinstance(module, nn.Conv2d):  # detectron2's c2_msra_fill
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feat = self.vit(images)
        outs = [stage(feat) for stage in self.stages]
        names = [str(i) for i in range(len(outs))]
        outs, names = self.top_block(outs, [], names)
        return OrderedDict(zip(names, outs, strict=True))


def build_vitdet(
    num_classes: int,
    size: str = "base",
    img_size: int = 800,
    patch_size: int = 16,
    pretrain_img_size: int = 256,
    window_size: int = 14,
    global_blocks: Sequence[int] | None = None,
    use_rel_pos: bool = True,
    drop_path: float = 0.1,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    fpn_channels: int = 256,
    anchor_scale: int = 8,
    image_mean: Sequence[float] = IMAGENET_MEAN,
    image_std: Sequence[float] = IMAGENET_STD,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_train: int = 1000,
    rpn_post_nms_top_n_test: int = 1000,
    box_batch_size_per_image: int = 512,
) -> FasterRCNN:
    """ViTDet Faster R-CNN; ``num_classes`` counts the background (K object classes -> K + 1).

    ``size`` picks embed_dim/depth/num_heads from ``VIT_SIZES``; explicit values override it. Images are
    resized to ``img_size`` x ``img_size`` (aspect not kept, like SARDet-100K's 800x800) and predictions are
    mapped back to each original image size.
    """
    arch = vit_size(size)
    arch.update({k: v for k, v in (("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads)) if v})
    _check(num_classes, img_size, patch_size, pretrain_img_size, arch, global_blocks, image_mean, image_std)
    padded = -(-img_size // MAX_STRIDE) * MAX_STRIDE  # the transform pads to /64; size rel-pos for it
    vit = ViTDetBackbone(
        img_size=padded,
        patch_size=patch_size,
        window_size=window_size,
        global_blocks=global_blocks,
        use_rel_pos=use_rel_pos,
        drop_path=drop_path,
        pretrain_img_size=pretrain_img_size,
        **arch,
    )
    backbone = SimpleFeaturePyramid(vit, fpn_channels)
    # One anchor size per level: anchor_scale x stride (8 x 4..64 = 32..512 px, the paper's setting).
    sizes = tuple((anchor_scale * stride,) for stride in (4, 8, 16, 32, 64))
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    roi_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=0)
    box_head = FastRCNNConvFCHead((fpn_channels, 7, 7), [fpn_channels] * 4, [1024], norm_layer=ln2d)
    return FasterRCNN(
        backbone,
        num_classes=None,  # given by the predictor
        min_size=img_size,
        max_size=img_size,
        image_mean=list(image_mean),
        image_std=list(image_std),
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(fpn_channels, anchors.num_anchors_per_location()[0], conv_depth=2),
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(1024, num_classes),
        box_score_thresh=score_thresh,
        box_nms_thresh=nms_thresh,
        box_detections_per_img=detections_per_img,
        box_batch_size_per_image=box_batch_size_per_image,
        fixed_size=(img_size, img_size),
        size_divisible=MAX_STRIDE,
    )


# Config keys of the ``model`` section for the detector: build_vitdet's keyword arguments.
DETECTOR_KEYS = tuple(p for p in inspect.signature(build_vitdet).parameters if p != "num_classes")


def build_detector(model_cfg: dict[str, Any], num_classes: int) -> FasterRCNN:
    """Build from a config ``model`` section (keys: :data:`DETECTOR_KEYS`); unknown keys -> ConfigError."""
    for key in model_cfg:
        if key not in DETECTOR_KEYS:
            raise ConfigError(f"model.{key}: unknown detector setting; known: {', '.join(DETECTOR_KEYS)}")
    return build_vitdet(num_classes, **model_cfg)


# -- what the training module and the inference loader both do to a built detector ---------------------


def detector_vit(model: FasterRCNN) -> ViTDetBackbone:
    """The plain ViT inside a detector of :func:`build_vitdet` (``backbone.vit``, MAE/timm key names)."""
    return model.backbone.vit


def _cast_floats(obj: Any, dtype: torch.dtype) -> Any:
    """Every floating-point tensor in ``obj`` (a tensor, or dicts / lists / tuples of them) as ``dtype``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return type(obj)((k, _cast_floats(v, dtype)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast_floats(v, dtype) for v in obj)
    return obj


def keep_boxes_float32(model: FasterRCNN) -> None:
    """Make anchors, proposals and detections float32 under bf16/fp16 autocast; the heavy layers stay mixed.

    torchvision builds anchors in the dtype of the feature maps and decodes boxes in the dtype of the regression
    output; bf16 keeps 8 mantissa bits, i.e. 4-px steps at 800 px, which erases small SAR objects. Forward hooks
    cast the pyramid, RPN head and box predictor outputs back to float32 (state-dict keys are unchanged). Applied
    once per model (a copy of a model that has the hooks keeps them).
    """
    if getattr(model, "boxes_float32", False):
        return
    model.boxes_float32 = True
    for module in (model.backbone, model.rpn.head, model.roi_heads.box_predictor):
        module.register_forward_hook(lambda _module, _inputs, output: _cast_floats(output, torch.float32))


def bf16_inference_copy(model: FasterRCNN) -> FasterRCNN:
    """An eval-mode copy whose heavy layers hold bfloat16 weights and run without autocast; ``model`` is untouched.

    Under autocast every call re-casts the weights, LayerNorm returns float32 that the next layer casts back, and
    convolutions reorder NCHW inputs; here the ViT, pyramid, RPN head and box head/predictor take bf16 inputs
    (forward pre-hooks), keep channels-last conv weights (so the pyramid's channels-first LayerNorm permutes
    without copying) and hand float32 to everything that builds boxes (:func:`keep_boxes_float32`'s hooks:
    anchors, proposals, RoIAlign and decoding stay float32). Call it without autocast.
    """
    fast = copy.deepcopy(model).eval()
    heavy = (fast.backbone, fast.rpn.head, fast.roi_heads.box_head, fast.roi_heads.box_predictor)
    for module in heavy:
        module.to(torch.bfloat16)
        module.register_forward_pre_hook(lambda _module, inputs: _cast_floats(inputs, torch.bfloat16))
    for module in (fast.backbone.stages, fast.rpn.head, fast.roi_heads.box_head):
        module.to(memory_format=torch.channels_last)
    keep_boxes_float32(fast)
    return fast


def set_max_dets(model: FasterRCNN, max_dets: int, configured: int) -> int:
    """COCO scores up to ``max_dets`` detections per image, so the detector must keep at least that many:
    ``roi_heads.detections_per_img`` becomes ``max(configured, max_dets)`` (``configured``: the value the
    detector was built with, ``model.detections_per_img``). Returns the new value."""
    model.roi_heads.detections_per_img = max(int(configured), int(max_dets))
    return model.roi_heads.detections_per_img


def load_vit_encoder(model: FasterRCNN, weights: str | Path, name: str | None = None) -> LoadReport:
    """Load a pre-trained ViT encoder (MAE / timm / our checkpoints) into the detector's ``backbone.vit``.

    Every ViT tensor except ViTDet's new rel-pos tables (:data:`NEW_IN_VITDET`) must come from the checkpoint;
    a partial load (another architecture, a classifier-only file) is a :class:`CheckpointError` naming ``name``
    (default: the path) rather than a silently weaker baseline.
    """
    vit = detector_vit(model)
    report = load_encoder_weights(vit, Path(str(weights)))
    needed = [k for k in vit.state_dict() if not k.endswith(NEW_IN_VITDET)]
    absent = [k for k in needed if k not in report.loaded]
    if absent:
        raise CheckpointError(
            f"{name or weights}: {len(absent)} of {len(needed)} ViT tensors could not be loaded "
            f"({', '.join(absent[:4])}{', ...' if len(absent) > 4 else ''}); {report.summary()}"
        )
    return report


def _check(
    num_classes: int,
    img_size: int,
    patch: int,
    pretrain_img_size: int,
    arch: dict[str, int],
    global_blocks: Sequence[int] | None,
    mean: Sequence[float],
    std: Sequence[float],
) -> None:
    """Config-level messages instead of shape errors deep inside torch."""
    if num_classes < 2:
        raise ConfigError(f"num_classes={num_classes}: must count the background too (K object classes -> K+1)")
    for name, value in (("img_size", img_size), ("pretrain_img_size", pretrain_img_size)):
        if value % patch:
            raise ConfigError(f"model.{name}={value} is not a multiple of model.patch_size={patch}")
    dim, heads, depth = arch["embed_dim"], arch["num_heads"], arch["depth"]
    if dim % 4 or dim % heads:
        raise ConfigError(f"model.embed_dim={dim} must be divisible by 4 and by model.num_heads={heads}")
    if global_blocks is not None and any(not 0 <= int(i) < depth for i in global_blocks):
        raise ConfigError(f"model.global_blocks={list(global_blocks)}: indices must lie in [0, {depth - 1}]")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ConfigError(f"model.image_mean={list(mean)} / image_std={list(std)}: need 3 values, std > 0")


# -- optimiser parameter groups ----------------------------------------------------------------------

_BLOCK_ID = re.compile(r"^blocks\.(\d+)\.")


def layer_scale(name: str, depth: int, decay: float) -> float:
    """ViTDet's layer-wise lr factor for a parameter name relative to the ViT (``blocks.3.attn...``).

    patch_embed / pos_embed: decay^(depth+1); block i: decay^(depth-i); anything else (pyramid, heads): 1.
    """
    if name.startswith(("patch_embed.", "pos_embed")):
        return decay ** (depth + 1)
    match = _BLOCK_ID.match(name)
    return decay ** (depth - int(match.group(1))) if match else 1.0


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, layer_decay: float | None = None
) -> list[dict[str, Any]]:
    """AdamW parameter groups with ``lr``, ``weight_decay`` and ``lr_scale`` (for schedulers to multiply).

    No weight decay for 1-D tensors (norms, biases), ``pos_embed`` and the rel-pos tables. With
    ``layer_decay`` the ViT found inside ``model`` (a :class:`ViTDetBackbone`, e.g. ``backbone.vit``) gets
    :func:`layer_scale` factors; everything else keeps the full lr.
    """
    vits = [(name, m) for name, m in model.named_modules() if isinstance(m, ViTDetBackbone)]
    if layer_decay is not None and len(vits) != 1:
        raise ValueError(f"layer_decay needs exactly one ViTDetBackbone in the model, found {len(vits)}")
    prefix, vit = (vits[0][0] + "." if vits[0][0] else "", vits[0][1]) if vits else ("", None)
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(("pos_embed", *NEW_IN_VITDET))
        decay = 0.0 if no_decay else weight_decay
        scale = 1.0
        if layer_decay is not None and vit is not None and name.startswith(prefix):
            scale = layer_scale(name[len(prefix) :], vit.depth, layer_decay)
        group = groups.setdefault(
            (scale, decay), {"params": [], "lr": lr * scale, "lr_scale": scale, "weight_decay": decay}
        )
        group["params"].append(param)
    return list(groups.values())


__all__ = [
    "DETECTOR_KEYS",
    "NEW_IN_VITDET",
    "SimpleFeaturePyramid",
    "ViTDetBackbone",
    "build_detector",
    "bf16_inference_copy",
    "build_vitdet",
    "default_global_blocks",
    "detector_vit",
    "keep_boxes_float32",
    "layer_scale",
    "load_vit_encoder",
    "param_groups",
    "set_max_dets",
]
