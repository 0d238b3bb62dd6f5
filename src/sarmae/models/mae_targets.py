"""What the MAE decoder predicts for each removed patch: ``model.target: pixels | norm_pixels | gradients``.

* ``pixels`` (the paper's and the default): the patch's p*p*3 normalised pixel values.
* ``norm_pixels``: the same, standardised per patch (the reference MAE's ``--norm_pix_loss``).
* ``gradients``: multi-scale SAR ratio gradients of the patch, after SAR-JEPA's gradient-feature target
  (Li et al., ISPRS J. 2024) and the ratio edge detectors ROA / ROEWA (Touzi et al. 1988; Fjortoft et al. 1998).

Why gradients. Speckle is a multiplicative, per-pixel random factor: a removed patch's speckle cannot be
inferred from the visible ones, so a pixel loss mostly teaches the decoder the local mean. Edges and the
contours of bright scatterers are what separates targets, and a *ratio* of mean intensities on the two sides
of a pixel measures them with the same statistics whatever the local brightness (constant false-alarm rate
under multiplicative speckle); in logs the ratio is a difference.

The ``gradients`` target of an image, step by step (:func:`sar_gradient_target`):

1. **Intensity.** Undo the input normalisation (ImageNet mean / std, the pre-training default), clip to
   [0, 1] and average the 3 channels: I (N, 1, H, W). Done in float32 and outside autocast.
2. **Ratio gradients at 4 scales.** For each window size k = 2r+1 in ``GRADIENT_WINDOWS`` = (5, 9, 13, 17)
   (SAR-JEPA's sizes; 17 px spans a 16-px patch), the mean intensity of the k x r box left and right of
   each pixel (centre column excluded), and of the r x k boxes above and below it; then
   ``gx = log(right + eps) - log(left + eps)``, ``gy = log(below + eps) - log(above + eps)``.
   Means are taken on intensity and only then logged (ratio *of averages*: the mean is the unbiased
   estimate under speckle, a mean of logs is biased by the number of looks). Small windows see small
   targets and fine edges, large ones average more speckle away and see extended structures. Box filters
   are separable ``avg_pool2d`` calls with replicate padding (any image size, a few cheap passes).
   ``eps`` = 1e-3, about a quarter of an 8-bit grey level, only keeps black (no-data, calm water) regions from
   producing huge ratios of near-zero means; above that a global gain ``I -> c I`` cancels in the
   difference of logs.
3. **Cells.** The 2 x 4 = 8 gradient maps are averaged over cells of p/4 x p/4 pixels (4 x 4 cells per patch
   for p = 16; ``gcd(p, 4)`` cells per side in general). Signed means keep polarity (bright scatterer on dark
   clutter vs shadow) and orientation (x vs y) while averaging speckle down further; a patch keeps the
   layout of its structure at a 4-px resolution, as HOG / MaskFeat cells do.
4. **Per-patch vector, not standardised.** Each patch's cells are flattened in (cell row, cell col, feature)
   order, like :meth:`MaskedAutoencoder.patchify`, and kept as log-ratios. Standardising each patch (as
   ``norm_pixels`` does) blows the speckle of homogeneous clutter up to unit variance: most patches then
   carry an unpredictable target, and a tiny MAE's loss stayed at 0.99 (= predicting zero) after 6 epochs
   on the demo's chips. Raw log-ratios keep clutter patches near zero (their spread is the speckle's, ~0.1
   for the small windows, less for the large ones) and weigh edges and scatterers by their contrast (a
   10 dB edge is 2.3); they are already free of a global gain.

Size: ``D = cells_per_side**2 * 2 * len(GRADIENT_WINDOWS)``, 16 * 2 * 4 = 128 for 16-px patches (the pixel
target has 768). Only the decoder's last layer ``decoder_pred`` changes width; the encoder, and with it the
exported / fine-tuned weights, is the same for every target.

Caveats. The gain invariance holds for pixel values proportional to intensity (or amplitude, whose gain is
the square root of the intensity's). Images already stored in dB (log-scaled 8-bit products, the synthetic
chips of :mod:`sarmae.data.synth`) turn a gain into an additive offset, which the target does not cancel
exactly; it stays a multi-scale edge target with the same layout. A non-ImageNet ``data.mean`` / ``data.std``
would make step 1 wrong, so pre-training refuses that combination.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sarmae.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sarmae.errors import ConfigError

TARGETS = ("pixels", "norm_pixels", "gradients")
GRADIENT_WINDOWS = (5, 9, 13, 17)  # box sizes k = 2r + 1, in pixels (SAR-JEPA's)
GRADIENT_CELLS = 4  # cells per patch side (gcd with the patch size)
LOG_EPS = 1.0e-3  # added to mean intensities in [0, 1] before the log
NORM_EPS = 1.0e-6  # added to the per-patch variance, as in the reference MAE's norm_pix_loss


def resolve_target(target: str | None, norm_pix_loss: bool = False) -> str:
    """The target name; ``None`` means ``pixels``, or ``norm_pixels`` with the old ``norm_pix_loss=true``.

    ``norm_pix_loss=true`` is the old name of ``target=norm_pixels``; with any other target it is an error.
    """
    if target is None:
        return "norm_pixels" if norm_pix_loss else "pixels"
    if target not in TARGETS:
        raise ConfigError(f"model.target={target!r} is unknown; use one of {', '.join(TARGETS)}")
    if norm_pix_loss and target != "norm_pixels":
        raise ConfigError(
            f"model.norm_pix_loss=true is the old name of model.target=norm_pixels and disagrees with "
            f"model.target={target}; drop norm_pix_loss (and set model.target=norm_pixels if that is what you want)"
        )
    return target


def gradient_cells(patch_size: int) -> int:
    """Cells per patch side of the ``gradients`` target: 4 when the patch size allows it."""
    return math.gcd(patch_size, GRADIENT_CELLS)


def target_dim(target: str, patch_size: int, in_chans: int = 3) -> int:
    """Width of one patch's target vector, i.e. of the decoder's last layer ``decoder_pred``."""
    if target == "gradients":
        return gradient_cells(patch_size) ** 2 * 2 * len(GRADIENT_WINDOWS)
    return patch_size**2 * in_chans


def standardize(target: torch.Tensor) -> torch.Tensor:
    """Per vector (last dim): subtract the mean, divide by sqrt(unbiased variance + 1e-6)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + NORM_EPS) ** 0.5


def intensity(imgs: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Normalised (N, 3, H, W) -> intensity (N, 1, H, W) in [0, 1], float32: un-normalise, clip, mean of channels."""
    x = imgs.float()
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * std_t + mean_t).clamp(0.0, 1.0).mean(dim=1, keepdim=True)


def box_sums(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Sums of every run of ``size`` consecutive entries along ``dim`` (length shrinks by size - 1), via cumsum.

    The cumulative sums run along one image side only (a few hundred values in [0, 1]), so float32 keeps
    them exact to ~1e-5; a 2-D integral image would not be.
    """
    c = torch.cumsum(x, dim)
    n = x.shape[dim] - size + 1
    out = c.narrow(dim, size - 1, n).clone()  # run t ends at t + size - 1 ...
    out.narrow(dim, 1, n - 1).sub_(c.narrow(dim, 0, n - 1))  # ... and starts after t - 1
    return out


def ratio_gradients(
    intens: torch.Tensor, windows: tuple[int, ...] = GRADIENT_WINDOWS, eps: float = LOG_EPS
) -> torch.Tensor:
    """Intensity (N, 1, H, W) -> (N, 2 * len(windows), H, W): (gx, gy) log-ratios of side means per window.

    For window k = 2r+1: gx = log mean of the k-row x r-column box right of the pixel minus that of the box left
    of it (centre column excluded), gy likewise below minus above. Borders are replicate-padded.
    """
    _, _, h, w = intens.shape
    pad = max(windows) // 2
    padded = F.pad(intens, (pad, pad, pad, pad), mode="replicate")
    maps = []
    for k in windows:
        r, o = k // 2, pad - k // 2
        x = padded[..., o : o + h + 2 * r, o : o + w + 2 * r]  # this window's r-pixel border
        # Column t of `sides` averages original columns t-r .. t-1 over rows i-r .. i+r: left of t, right of t-r-1.
        sides = torch.log(box_sums(box_sums(x, k, -2), r, -1) / (k * r) + eps)  # (N, 1, H, W + r + 1)
        ends = torch.log(box_sums(box_sums(x, k, -1), r, -2) / (k * r) + eps)  # (N, 1, H + r + 1, W)
        maps += [sides[..., r + 1 :] - sides[..., :w], ends[..., r + 1 :, :] - ends[..., :h, :]]
    return torch.cat(maps, dim=1)


def sar_gradient_target(imgs: torch.Tensor, patch_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Normalised images (N, 3, H, W) -> ``gradients`` target (N, L, D), float32, no gradient; see the module doc.

    L = (H/p) * (W/p) patches in row-major order (as the encoder's tokens), D = :func:`target_dim`.
    """
    with torch.no_grad(), torch.autocast(device_type=imgs.device.type, enabled=False):
        feats = ratio_gradients(intensity(imgs, mean, std))  # (N, C, H, W)
        n, c, h, w = feats.shape
        q = gradient_cells(patch_size)  # cells per patch side
        cell = patch_size // q
        # Mean over each cell's pixels, columns then rows: (patch row, cell row, pixel row, patch col, cell col).
        cells = feats.reshape(n, c, h, w // cell, cell).mean(dim=-1)
        cells = cells.reshape(n, c, h // patch_size, q, cell, w // patch_size, q).mean(dim=4)
        x = torch.einsum("nchpwq->nhwpqc", cells)  # patch row, patch col, cell row, cell col, feature
        return x.reshape(n, (h // patch_size) * (w // patch_size), q * q * c)
