"""The MAE reconstruction figure (paper Figure 2): original | masked input | reconstruction | pasted.

"Pasted" = the reconstruction with the visible patches replaced by the original pixels, which is what
people usually show. Masks come from a private RNG so drawing a figure never disturbs training's RNG.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from sarmae.data.io import IntensityScaling, read_image  # noqa: E402
from sarmae.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from sarmae.data.unlabeled import UnlabeledImages, find_images  # noqa: E402
from sarmae.errors import CheckpointError, ConfigError, DataError  # noqa: E402
from sarmae.files import writing  # noqa: E402
from sarmae.models.checkpoints import open_checkpoint, unwrap_state_dict  # noqa: E402
from sarmae.models.mae import MaskedAutoencoder, build_mae  # noqa: E402

COLUMNS = ("original", "masked input", "reconstruction", "reconstruction + visible")


def list_images(inputs: list[str | Path], limit: int | None = None) -> list[Path]:
    """Image files from files and folders (recursive, sorted); a COCO json contributes its images.

    A path that does not exist is an error (a typo should not silently shrink the figure); files that exist
    but cannot be decoded are dealt with by :func:`load_images`.
    """
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.suffix == ".json" and item.is_file():
            found += [Path(p) for p in UnlabeledImages([item]).paths]
        elif item.is_dir():
            found += [Path(p) for p in find_images(item)]
        elif item.is_file():
            found.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
        if limit and len(found) >= limit:
            break
    if not found:
        raise DataError(f"no images found in {', '.join(map(str, inputs))}")
    return found[:limit] if limit else found


def model_input(image: np.ndarray, size: int, mean, std) -> torch.Tensor:
    """An (H, W, 3) image in [0, 1] -> the normalised (3, size, size) MAE input, resized like the MAE training
    transform (bilinear, antialiased; no flip)."""
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    pixels = torch.nn.functional.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True)[0]
    return (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def load_images(
    paths: list[Path], size: int, mean, std, scaling: IntensityScaling | None, count: int | None = None
) -> tuple[torch.Tensor, list[Path]]:
    """The first ``count`` readable images as a (N, 3, size, size) normalised batch, resized like the MAE
    training transform (no flip), and their paths. Unreadable files are skipped with one warning line each."""
    batch, used, skipped = [], [], 0
    for path in paths:
        if count is not None and len(batch) >= count:
            break
        try:
            image = read_image(path, scaling)
        except (DataError, OSError) as exc:
            skipped += 1
            print(f"warning: skipping {path}: {exc}", file=sys.stderr)
            continue
        batch.append(model_input(image, size, mean, std))
        used.append(path)
    if not batch:
        raise DataError(f"none of the {skipped} images could be read (see the warnings above); pass readable images")
    return torch.stack(batch), used


@torch.no_grad()
def reconstruction_panels(
    model: MaskedAutoencoder, images: torch.Tensor, seed: int = 0
) -> dict[str, torch.Tensor]:
    """The four panels, each (N, 3, H, W) in the normalised input space."""
    if model.target == "gradients":
        raise ConfigError("the reconstruction figure needs a pixel target (model.target=pixels or norm_pixels); "
                          "this MAE predicts SAR gradient features, not pixels")
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[images.device] if images.device.type == "cuda" else []):
        torch.manual_seed(seed)
        _, pred, mask = model(images)
    model.train(was_training)
    if getattr(model, "norm_pix_loss", False):
        target = model.patchify(images)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mean
    recon = model.unpatchify(pred)
    patch_mask = mask.unsqueeze(-1).expand(-1, -1, pred.shape[-1])
    mask_img = model.unpatchify(patch_mask.to(pred.dtype))
    return {
        COLUMNS[0]: images,
        COLUMNS[1]: images * (1 - mask_img),
        COLUMNS[2]: recon,
        COLUMNS[3]: images * (1 - mask_img) + recon * mask_img,
    }


def draw_figure(
    panels: dict[str, torch.Tensor], mean, std, out: Path, row_names: list[str] | None = None
) -> Path:
    """One row per image, one column per panel (each (N, 3, H, W), normalised); written as PNG to ``out``."""
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    rows = next(iter(panels.values())).shape[0]
    fig, axes = plt.subplots(rows, len(panels), figsize=(3 * len(panels), 3 * rows), squeeze=False)
    for col, (title, batch) in enumerate(panels.items()):
        pixels = (batch.float().cpu() * std_t + mean_t).clamp(0, 1)
        for row in range(rows):
            ax = axes[row][col]
            ax.imshow(pixels[row].permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title)
            if col == 0 and row_names:
                ax.set_ylabel(row_names[row], fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with writing(out):
        fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def save_reconstruction_figure(
    model: MaskedAutoencoder, inputs: list, out: Path, cfg: dict, count: int = 4, seed: int = 0
) -> Path:
    """Figure for the first ``count`` readable images of ``inputs`` (files, folders or COCO json)."""
    data = cfg.get("data") or {}
    mean, std = tuple(data.get("mean") or IMAGENET_MEAN), tuple(data.get("std") or IMAGENET_STD)
    scaling = IntensityScaling.from_config(data.get("scaling"))
    images, used = load_images(list_images(inputs), model.patch_embed.img_size[0], mean, std, scaling, count)
    device = next(model.parameters()).device
    panels = reconstruction_panels(model, images.to(device), seed)
    return draw_figure(panels, mean, std, out, row_names=[p.name for p in used])


def load_mae_checkpoint(path: Path) -> tuple[MaskedAutoencoder, dict]:
    """Our pre-training checkpoint (``weights/last.ckpt``): the MAE and the config it was trained with."""
    advice = "pass weights/last.ckpt (or weights/epochNNN.ckpt) of a sarmae pretrain run"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; {advice}")
    if path.suffix == ".safetensors":
        raise CheckpointError(f"{path}: holds the encoder only, the figure needs the MAE decoder too; {advice}")
    ckpt = open_checkpoint(path, missing=advice, advice=advice)
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    cfg = (hparams or {}).get("cfg") if isinstance(hparams, dict) else None
    if not isinstance(cfg, dict) or "classes" in hparams:
        raise CheckpointError(f"{path}: not a sarmae MAE pre-training checkpoint; {advice}")
    try:
        model = build_mae(cfg.get("model") or {})
        model.load_state_dict(unwrap_state_dict(ckpt, path))
    except (ConfigError, RuntimeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{path}: weights do not fit its own MAE config ({reason}); {advice}") from None
    return model, cfg


def reconstruct(checkpoint: Path, inputs: list[str], out: Path, seed: int = 0, count: int = 8) -> Path:
    """``sarmae reconstruct``: the figure (original | masked | reconstruction | pasted) for up to ``count`` images."""
    model, cfg = load_mae_checkpoint(Path(checkpoint))
    path = save_reconstruction_figure(model, inputs, Path(out), cfg, count=count, seed=seed)
    print(f"wrote {path}")
    return path
