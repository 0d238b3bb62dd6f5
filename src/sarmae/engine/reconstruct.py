"""The MAE reconstruction figure (paper Figure 2): original | masked input | reconstruction | pasted.

"Pasted" = the reconstruction with the visible patches replaced by the original pixels, which is what
people usually show. Masks come from a private RNG so drawing a figure never disturbs training's RNG.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from sarmae.data.io import IMAGE_EXTENSIONS, IntensityScaling, read_image  # noqa: E402
from sarmae.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from sarmae.errors import CheckpointError, DataError  # noqa: E402
from sarmae.models.checkpoints import read_state_dict  # noqa: E402
from sarmae.models.mae import MaskedAutoencoder, build_mae  # noqa: E402

COLUMNS = ("original", "masked input", "reconstruction", "reconstruction + visible")


def list_images(inputs: list[str | Path], limit: int | None = None) -> list[Path]:
    """Image files from files and folders (recursive, sorted); a COCO json contributes its images."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.suffix == ".json" and item.is_file():
            from sarmae.data.unlabeled import UnlabeledImages

            found += list(UnlabeledImages([item]).paths)
        elif item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif item.is_file():
            found.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
        if limit and len(found) >= limit:
            break
    if not found:
        raise DataError(f"no images found in {', '.join(map(str, inputs))}")
    return found[:limit] if limit else found


def load_images(paths: list[Path], size: int, mean, std, scaling: IntensityScaling | None) -> torch.Tensor:
    """(N, 3, size, size) normalised batch, resized like the MAE training transform (no flip)."""
    batch = []
    for path in paths:
        image = torch.from_numpy(read_image(path, scaling)).permute(2, 0, 1)
        image = torch.nn.functional.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True)
        batch.append(image[0])
    images = torch.stack(batch)
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


@torch.no_grad()
def reconstruction_panels(
    model: MaskedAutoencoder, images: torch.Tensor, seed: int = 0
) -> dict[str, torch.Tensor]:
    """The four panels, each (N, 3, H, W) in the normalised input space."""
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


def draw_figure(panels: dict[str, torch.Tensor], mean, std, out: Path, masked_fill: float = 0.0) -> Path:
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
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def save_reconstruction_figure(
    model: MaskedAutoencoder, inputs: list, out: Path, cfg: dict, count: int = 4, seed: int = 0
) -> Path:
    """Figure for the first ``count`` images of ``inputs`` (files, folders or COCO json)."""
    data = cfg.get("data") or {}
    mean, std = tuple(data.get("mean", IMAGENET_MEAN)), tuple(data.get("std", IMAGENET_STD))
    paths = list_images(inputs, limit=count)
    images = load_images(
        paths, model.patch_embed.img_size[0], mean, std, IntensityScaling.from_config(data.get("scaling"))
    )
    device = next(model.parameters()).device
    return draw_figure(reconstruction_panels(model, images.to(device), seed), mean, std, out)


def load_mae_checkpoint(path: Path) -> tuple[MaskedAutoencoder, dict]:
    """Our pre-training checkpoint (``weights/last.ckpt``): the MAE and the config it was trained with."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; pass weights/last.ckpt of a pretrain run")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    cfg = (ckpt.get("hyper_parameters") or {}).get("cfg") if isinstance(ckpt, dict) else None
    if not cfg:
        raise CheckpointError(f"{path}: not a sarmae pre-training checkpoint (no config inside)")
    model = build_mae(cfg.get("model") or {})
    model.load_state_dict(read_state_dict(path))
    return model, cfg


def reconstruct(checkpoint: Path, inputs: list[str], out: Path, seed: int = 0, count: int = 8) -> Path:
    """``sarmae reconstruct``: the figure for up to ``count`` images."""
    model, cfg = load_mae_checkpoint(checkpoint)
    path = save_reconstruction_figure(model, inputs, out, cfg, count=count, seed=seed)
    print(f"wrote {path}")
    return path
