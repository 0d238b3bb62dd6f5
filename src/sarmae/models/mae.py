"""Masked autoencoder (He et al., 2021) with timm layers, for self-supervised pre-training.

Attribute names are the reference ``models_mae.py`` names, so ``state_dict()`` already is the reference
layout (``decoder_embed``, ``mask_token``, ``decoder_pos_embed``, ``decoder_blocks.N``, ``decoder_norm``,
``decoder_pred``) and ``encoder_state_dict()`` loads strictly into a timm ``VisionTransformer``.
The encoder sees only the visible tokens (no dense mask tokens), which is what makes MAE cheap.
What the decoder predicts is ``target`` (:mod:`sarmae.models.mae_targets`): pixels (the reference), pixels
standardised per patch, or multi-scale SAR ratio gradients; only ``decoder_pred``'s width depends on it.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from sarmae.errors import ConfigError
from sarmae.models.mae_targets import resolve_target, sar_gradient_target, standardize, target_dim
from sarmae.models.vit import CpuFp32Attention, sincos_2d, vit_size

DECODER_PREFIXES = ("decoder_", "mask_token")


class MaskedAutoencoder(nn.Module):
    """ViT encoder + lightweight ViT decoder that predicts the ``target`` of removed patches.

    Defaults are the paper's setup: ViT-B encoder, 256-px input (L = 256 patches of 16 px), 3-block 512-d
    decoder, mask ratio 0.75 (64 visible tokens), pixel target. ``target``: ``pixels``, ``norm_pixels`` or
    ``gradients``; None = ``pixels``, or ``norm_pixels`` with the old switch ``norm_pix_loss=True``.
    """

    def __init__(
        self,
        img_size: int = 256,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 3,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = False,
        mask_ratio: float = 0.75,
        target: str | None = None,
    ) -> None:
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.embed_dim = embed_dim
        self.target = resolve_target(target, norm_pix_loss)
        self.norm_pix_loss = self.target == "norm_pixels"  # read by the reconstruction figure
        self.mask_ratio = mask_ratio

        # Encoder: names match timm's VisionTransformer.
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid_size = img_size // patch_size
        num_patches = self.grid_size**2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer, attn_layer=CpuFp32Attention)
            for _ in range(depth)
        )
        self.norm = norm_layer(embed_dim)

        # Decoder: only used in pre-training, dropped afterwards.
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(
                decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer,
                attn_layer=CpuFp32Attention,
            )
            for _ in range(decoder_depth)
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, target_dim(self.target, patch_size, in_chans), bias=True)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Reference init: fixed sin-cos positions, xavier-uniform Linears/patch proj, N(0, .02) tokens."""
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d(self.pos_embed.shape[-1], self.grid_size, cls_token=True)[None])
            self.decoder_pos_embed.copy_(
                sincos_2d(self.decoder_pos_embed.shape[-1], self.grid_size, cls_token=True)[None]
            )
        proj = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(proj.data.view(proj.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(_init_layer)

    # -- pixels <-> patch tokens -------------------------------------------------------------------

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p*p*C); tokens row-major, each patch ordered (row, col, channel)."""
        p = self.patch_size
        n, c, h, w = imgs.shape
        if h != w or h % p:
            raise ValueError(f"patchify needs square images with side divisible by {p}, got {h}x{w}")
        g = h // p
        x = imgs.reshape(n, c, g, p, g, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, g * g, p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, p*p*C) -> (N, C, H, W); exact inverse of :meth:`patchify`."""
        p, c = self.patch_size, self.in_chans
        n, length, _ = x.shape
        g = int(round(length**0.5))
        if g * g != length:
            raise ValueError(f"unpatchify needs a square number of tokens, got {length}")
        x = x.reshape(n, g, g, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(n, c, g * p, g * p)

    # -- masking -----------------------------------------------------------------------------------

    @staticmethod
    def random_masking(
        x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep a random subset of ``L*(1-mask_ratio)`` tokens per image.

        x (N, L, D) -> (visible (N, K, D), mask (N, L) with 1 = removed / 0 = kept, ids_restore (N, L)).
        Each image argsorts its own uniform noise and keeps the lowest-noise tokens. The kept ids are
        then sorted, so visible tokens stay in image order (mask_ratio=0 leaves the sequence unchanged);
        attention does not care about order, and ``ids_restore`` undoes whatever order is used.
        """
        n, length, dim = x.shape
        len_keep = int(length * (1 - mask_ratio))
        noise_device = generator.device if generator is not None else x.device  # a CPU generator works on GPU
        noise = torch.rand(n, length, device=noise_device, generator=generator).to(x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_keep = ids_shuffle[:, :len_keep].sort(dim=1).values
        ids_shuffle = torch.cat([ids_keep, ids_shuffle[:, len_keep:]], dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        mask = torch.ones(n, length, device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return visible, mask, ids_restore

    # -- forward -----------------------------------------------------------------------------------

    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs (N, C, H, W) -> (latent (N, 1+K, D) with cls first, mask (N, L), ids_restore (N, L))."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, generator)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (N, 1+K, D), ids_restore (N, L) -> predictions (N, L, D_target) for every patch."""
        x = self.decoder_embed(latent)
        n, length = ids_restore.shape
        masks = self.mask_token.to(x.dtype).expand(n, length + 1 - x.shape[1], -1)
        tokens = torch.cat([x[:, 1:], masks], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:]

    def loss_target(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs (N, C, H, W) -> float32 target (N, L, D_target) of every patch.

        ``pixels``: :meth:`patchify`; ``norm_pixels``: each patch standardised by its own mean and unbiased
        variance; ``gradients``: :func:`~sarmae.models.mae_targets.sar_gradient_target`.
        """
        if self.target == "gradients":
            return sar_gradient_target(imgs, self.patch_size)
        target = self.patchify(imgs).float()
        return standardize(target) if self.target == "norm_pixels" else target

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-patch MSE to :meth:`loss_target`, averaged over removed patches only (all if none was removed).

        Computed in float32 so bf16 autocast does not round the loss.
        """
        target = self.loss_target(imgs)
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
        weights = torch.where(mask.sum() > 0, mask, torch.ones_like(mask))
        return (per_patch * weights).sum() / weights.sum()

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs (N, C, H, W) -> (loss scalar, pred (N, L, D_target), mask (N, L) with 1 = removed)."""
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio, generator)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask

    # -- export ------------------------------------------------------------------------------------

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Encoder tensors only, under timm / official MAE names (loads strictly into a timm ViT)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(DECODER_PREFIXES)}


def _init_layer(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# Config keys are exactly the constructor's arguments (plus ``size``), with its defaults.
MAE_DEFAULTS = {
    k: p.default for k, p in inspect.signature(MaskedAutoencoder.__init__).parameters.items() if k != "self"
}


def build_mae(model_cfg: dict[str, Any]) -> MaskedAutoencoder:
    """Build from a config section; ``size`` fills embed_dim/depth/num_heads, explicit keys override it."""
    cfg = dict(model_cfg)
    for key in cfg:
        if key != "size" and key not in MAE_DEFAULTS:
            raise ConfigError(f"model.{key}: unknown MAE setting; known: size, {', '.join(MAE_DEFAULTS)}")
    kwargs = {**MAE_DEFAULTS, **(vit_size(cfg.pop("size")) if "size" in cfg else {}), **cfg}
    _check(kwargs)
    return MaskedAutoencoder(**kwargs)


def _check(kw: dict[str, Any]) -> None:
    """Reject inconsistent sizes with a config-level message instead of a shape error deep in torch."""
    if kw["img_size"] % kw["patch_size"]:
        raise ConfigError(f"model.img_size={kw['img_size']} is not a multiple of model.patch_size={kw['patch_size']}")
    for dim_key, heads_key in (("embed_dim", "num_heads"), ("decoder_embed_dim", "decoder_num_heads")):
        if kw[dim_key] % 4 or kw[dim_key] % kw[heads_key]:
            raise ConfigError(
                f"model.{dim_key}={kw[dim_key]} must be divisible by 4 and by model.{heads_key}={kw[heads_key]}"
            )
    if kw["target"] == "gradients" and kw["in_chans"] != 3:
        raise ConfigError(
            f"model.target=gradients reads 3-channel (ImageNet-normalised) images, not in_chans={kw['in_chans']}"
        )
    if not 0.0 <= kw["mask_ratio"] < 1.0:
        raise ConfigError(f"model.mask_ratio={kw['mask_ratio']} must be in [0, 1), e.g. 0.75")
