"""A natural-image pre-training pool: the stand-in for ImageNet in the demo's second Table 1 row.

The paper's Table 1 also claims that SAR pre-training beats natural-image (ImageNet) pre-training. No
ImageNet-pretrained encoder of the demo's tiny size exists and nothing may be downloaded, so the demo
pre-trains the same tiny MAE, with the same budget, on optical photographs that ship inside an installable
package (scikit-image's sample data: people, animals, objects, textures, astronomy, microscopy), cut into many
random crops. It is an honest stand-in for "natural images", not ImageNet: a dozen photographs, not a
million. Crops are RGB, like ImageNet; the fine-tuning images are single-band SAR broadcast to three channels,
as in the paper.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from sarmae.errors import ConfigError, DataError
from sarmae.files import write_json_atomic, writing

# Photographs (and photograph-like scientific images) in scikit-image's data folder; drawings, text pages and
# binary masks are left out.
PHOTOS = (
    "astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
    "motorcycle_right.png", "brick.png", "grass.png", "gravel.png", "coins.png", "moon.png",
    "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "cell.png",
)
MANIFEST = "natural.json"
VERSION = 1


def photo_folder() -> Path:
    """scikit-image's bundled sample photographs (no download)."""
    try:
        return Path(str(resources.files("skimage") / "data"))
    except ModuleNotFoundError:
        raise DataError("the natural-image row needs scikit-image's sample photographs: pip install scikit-image") \
            from None


def load_photos() -> list[Image.Image]:
    folder = photo_folder()
    missing = [name for name in PHOTOS if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder}: sample photographs missing ({', '.join(missing)}); reinstall scikit-image")
    return [Image.open(folder / name).convert("RGB") for name in PHOTOS]


def random_crop(rng: np.random.Generator, photo: Image.Image, size: int) -> Image.Image:
    """A square crop of random side (log-uniform from ``size`` / 2 up to the photo's short side) at a random place,
    randomly mirrored, resized to ``size`` x ``size``."""
    w, h = photo.size
    low, high = min(size / 2, min(w, h)), min(w, h)
    side = int(round(np.exp(rng.uniform(np.log(low), np.log(high)))))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def write_natural_pool(out: str | Path, count: int, size: int, seed: int = 0) -> Path:
    """Write ``count`` random ``size``-px RGB crops of the sample photographs to ``out/NNNNNNN.png``.

    Deterministic for ``seed`` (image ``i`` uses its own generator, so a larger pool keeps the first images). A
    folder whose ``natural.json`` records the same parameters is reused as it is.
    """
    if not isinstance(count, int) or count < 1:
        raise ConfigError(f"natural images: count={count!r} must be a positive integer")
    if not isinstance(size, int) or not 16 <= size <= 1024:
        raise ConfigError(f"natural images: size={size!r} must be 16..1024 pixels")
    out = Path(out)
    params = {"count": count, "size": size, "seed": seed, "version": VERSION, "photos": list(PHOTOS)}
    try:
        if json.loads((out / MANIFEST).read_text()) == params:
            return out
    except (OSError, ValueError):
        pass
    photos = load_photos()
    out.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        crop = random_crop(rng, photos[int(rng.integers(len(photos)))], size)
        with writing(out / f"{i:07d}.png"):
            crop.save(out / f"{i:07d}.png", compress_level=1)
    write_json_atomic(out / MANIFEST, params)  # written last: a pool interrupted half-way is regenerated
    return out
