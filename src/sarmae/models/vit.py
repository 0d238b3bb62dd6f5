"""Plain ViT pieces shared by the MAE encoder and the ViTDet backbone.

Both models use the reference MAE / timm key names (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``) so weights move 1:1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import Attention

from sarmae.errors import ConfigError

# Named encoder sizes. "tiny" is this project's CPU size (tests, demo), not timm's ViT-Ti (12 blocks).
VIT_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"embed_dim": 192, "depth": 6, "num_heads": 3},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
}


def vit_size(name: str) -> dict[str, int]:
    """Encoder hyper-parameters for a named size (``tiny``, ``small``, ``base``, ``large``)."""
    if name not in VIT_SIZES:
        raise ConfigError(f"model.size={name!r}: unknown ViT size; choose one of {', '.join(VIT_SIZES)}")
    return dict(VIT_SIZES[name])


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim) embedding, ``[sin | cos]`` halves, MAE's frequencies 1/10000^(i/(dim/2))."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions.double().reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid_size: int, cls_token: bool = False) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, (grid_size**2 [+1], dim), float32.

    Matches MAE's ``get_2d_sincos_pos_embed``: tokens in row-major order; the first dim/2 channels
    encode the column (x) index, the last dim/2 the row (y) index; an optional zero row for the cls token.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def resize_pos_embed(
    pos_embed: torch.Tensor, new_size: Sequence[int], old_size: Sequence[int], num_prefix_tokens: int = 0
) -> torch.Tensor:
    """The one position-embedding resizer: (1, prefix + oh*ow, C) -> (1, prefix + nh*nw, C).

    Bicubic, ``align_corners=False``, no antialiasing, computed in float32 and cast back, as MAE fine-tuning,
    ViTDet and timm's ``resample_abs_pos_embed`` do; prefix (cls) rows are copied unchanged. Returns the input
    itself when the grid already matches. Used when loading checkpoints and by the ViTDet backbone's forward.
    """
    (oh, ow), (nh, nw) = (int(v) for v in old_size), (int(v) for v in new_size)
    if (oh, ow) == (nh, nw):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = pos_embed.shape[-1]
    grid = grid.float().reshape(1, oh, ow, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(nh, nw), mode="bicubic", align_corners=False, antialias=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, nh * nw, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1) if num_prefix_tokens else grid


class CpuFp32Attention(Attention):
    """timm's ``Attention`` (same parameters, keys and fp32 results) for ``Block(attn_layer=...)``, whose
    ``scaled_dot_product_attention`` runs in float32 under CPU autocast.

    Why: on AVX-512 CPUs without AMX, PyTorch's CPU flash-attention backward is ~2x slower on bfloat16 than on
    float32 (ViT-B MAE step, 8 x 256 px: ~0.68 s of attention in bf16, ~0.39 s in fp32, one thread). The qkv and
    proj matmuls stay bf16; the attention core gets fp32 precision for free. GPUs, plain fp32, masks and gated
    attention take timm's path unchanged.
    """

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if not (self.fused_attn and x.device.type == "cpu" and torch.is_autocast_enabled("cpu")) or (
            attn_mask is not None or self.gate is not None
        ):
            return super().forward(x, attn_mask, is_causal)
        n, length, _ = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.float().unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0, is_causal=is_causal
            )
        out = out.to(qkv.dtype).transpose(1, 2).reshape(n, length, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(out)))
