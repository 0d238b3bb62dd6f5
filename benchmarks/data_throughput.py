"""Data-loader throughput per worker (one process, one thread): MAE pre-training and detection fine-tuning samples.

Synthetic SARDet-100K-like chips (speckled 8-bit SAR from :mod:`sarmae.data.synth`, grey and 3-band copies,
JPEG quality 90 and PNG, sides 224-1000 px) are written to a temp dir. For each format and size it measures:

* pre-training, ``now``: ``UnlabeledImages`` + ``mae_transforms`` as ``sarmae pretrain`` builds them (the 8-bit
  fast path: uint8 decode + resize, JPEG at reduced DCT scale), resize to 256 and random resized crop;
* pre-training, ``float``: the general path every sample took before (``read_image`` -> float32 [3, H, W] ->
  torchvision v2 resize / crop, flip, normalise), which 16-bit / float images still take;
* pre-training, ``packed``: the same chips packed by ``sarmae data pack`` (uint8, side capped at 512) and read
  back from the LitData shards, as ``sarmae pretrain data.shards=...`` streams them;
* fine-tuning: ``CocoDetection`` + ``detection_transforms(True, 800)`` (800 x 800 with boxes) as
  ``sarmae finetune`` / ``detection_loader`` build them.

``now`` and ``float`` are timed interleaved in one process (median of ``--reps`` rounds), so their ratio holds
on a busy machine even when absolute numbers wobble. ``--stages`` adds a per-stage breakdown.

    python benchmarks/data_throughput.py                 # about 2 minutes on a 2-core machine
    python benchmarks/data_throughput.py --reps 3 --stages
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from sarmae.data.coco import CocoDetection
from sarmae.data.io import draft_scale, read_image
from sarmae.data.shards import pack_images, packed_images
from sarmae.data.synth import generate_image
from sarmae.data.transforms import IMAGENET_MEAN, IMAGENET_STD, detection_transforms, mae_transforms
from sarmae.data.unlabeled import UnlabeledImages

SIZES = (224, 512, 800, 1000)
FORMATS = (("jpg", "L"), ("jpg", "RGB"), ("png", "L"), ("png", "RGB"))
TARGET = 300.0  # pre-training samples/s per core: 16 cores keep up with ~4,000 img/s of bf16 MAE on one GPU


def write_chips(root: Path, count: int) -> dict[tuple[str, str, int], list[Path]]:
    """``count`` chips per (format, mode, size) under ``root``, plus a COCO train split of the 800-px JPEGs."""
    rng = np.random.default_rng(0)
    chips: dict[tuple[str, str, int], list[Path]] = {}
    for size in SIZES:
        for k in range(count):
            pixels, boxes = generate_image(rng, size)
            for ext, mode in FORMATS:
                array = pixels if mode == "L" else np.repeat(pixels[:, :, None], 3, axis=2)
                path = root / f"{ext}_{mode}_{size}" / f"{k:07d}.{ext}"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path, **({"quality": 90} if ext == "jpg" else {}))
                chips.setdefault((ext, mode, size), []).append(path)
    return chips


def write_coco(root: Path, paths: list[Path]) -> Path:
    """A SARDet-100K layout (Annotations/train.json, JPEGImages/train/) over ``paths``, two boxes per image."""
    images_dir = root / "JPEGImages" / "train"
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    for i, src in enumerate(paths):
        (images_dir / src.name).write_bytes(src.read_bytes())
        with Image.open(src) as img:
            width, height = img.size
        images.append({"id": i, "file_name": src.name, "width": width, "height": height})
        for j, (x, y) in enumerate(((0.1, 0.2), (0.5, 0.6))):
            annotations.append({"id": 2 * i + j, "image_id": i, "category_id": j, "iscrowd": 0,
                                "bbox": [x * width, y * height, 0.1 * width, 0.05 * height],
                                "area": 0.005 * width * height})
    (root / "Annotations").mkdir()
    categories = [{"id": k, "name": name} for k, name in enumerate(("ship", "aircraft"))]
    (root / "Annotations" / "train.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
    return root


def float_path(crop: bool, paths: list[Path]) -> Callable[[int], torch.Tensor]:
    """Sample ``i`` as the code before the 8-bit path made it: ``read_image`` (float32 [3, H, W]), then the MAE
    recipe as a torchvision v2 pipeline (the float path of ``MAETransform`` gives the same pixels)."""
    first = (v2.RandomResizedCrop(256, scale=(0.2, 1.0), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
             if crop else v2.Resize((256, 256), antialias=True))
    transform = v2.Compose([first, v2.RandomHorizontalFlip(0.5), v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD))])

    def load(i: int) -> torch.Tensor:
        return transform(torch.from_numpy(read_image(paths[i])).permute(2, 0, 1).contiguous())
    return load


def rate(fn: Callable[[int], object], n: int) -> float:
    """Samples/s of ``fn(0..n-1)``, twice over."""
    start = time.perf_counter()
    for i in (*range(n), *range(n)):
        fn(i)
    return 2 * n / (time.perf_counter() - start)


def interleaved(fns: dict[str, Callable[[int], object]], n: int, reps: int) -> dict[str, float]:
    """Median samples/s of each function, the functions taking turns round by round."""
    for fn in fns.values():
        fn(0)  # warm-up: imports, page cache
    rounds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            rounds[name].append(rate(fn, n))
    return {name: float(np.median(v)) for name, v in rounds.items()}


def pretrain_rows(root: Path, chips: dict, reps: int) -> list[tuple]:
    rows = []
    for (ext, mode, size), paths in chips.items():
        shards = pack_images(paths, root / f"packed_{ext}_{mode}_{size}", max_size=512).out
        for crop in (False, True):
            transform = mae_transforms(256, random_resized_crop=crop)
            fast = UnlabeledImages(paths, transform=transform)
            packed = packed_images(str(shards), transform, shuffle=False)
            result = interleaved({"now": fast.__getitem__, "float": float_path(crop, paths),
                                  "packed": packed.__getitem__}, n=len(paths), reps=reps)
            rows.append((ext, mode, size, "crop" if crop else "resize", result["now"], result["float"],
                         result["packed"]))
    return rows


def finetune_rows(root: Path, chips: dict, reps: int) -> list[tuple]:
    rows = []
    for ext, mode in FORMATS:
        for size in (512, 800, 1000):
            paths = chips[(ext, mode, size)]
            dataset = CocoDetection(write_coco(root / f"coco_{ext}_{mode}_{size}", paths), "train",
                                    transforms=detection_transforms(True, 800))
            result = interleaved({"finetune": dataset.__getitem__}, n=len(dataset), reps=reps)
            rows.append((ext, mode, size, result["finetune"]))
    return rows


def timed(fn: Callable[[], object], reps: int = 30) -> tuple[float, object]:
    """Fastest of ``reps`` runs of ``fn()`` in milliseconds (least disturbed by other processes), and its result."""
    times, out = [], None
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.min(times)) * 1e3, out


def stages(path: Path, crop: bool) -> dict[str, dict[str, float]]:
    """Milliseconds per stage, general float path vs the 8-bit path, for one file (resize or crop to 256)."""
    from torchvision.transforms.v2 import functional as F

    from sarmae.data.io import bands_to_image

    transform = mae_transforms(256, random_resized_crop=crop)
    torch.manual_seed(0)
    with Image.open(path) as img:
        box, _ = transform.draw(img.height, img.width)
    resample = Image.Resampling.BICUBIC if crop else Image.Resampling.BILINEAR
    general: dict[str, float] = {}
    general["open+decode"], raw = timed(lambda: np.asarray(Image.open(path)))
    bands = raw[:, :, None] if raw.ndim == 2 else raw
    general["to float /255 + 3 bands"], image = timed(lambda: bands_to_image(bands, None, None)[0])
    general["to tensor"], tensor = timed(lambda: torch.from_numpy(image).permute(2, 0, 1).contiguous())
    if crop:
        general["crop+resize (float)"], small = timed(lambda: F.resized_crop(
            tensor, *box, [256, 256], interpolation=F.InterpolationMode.BICUBIC, antialias=True))
    else:
        general["resize (float)"], small = timed(lambda: F.resize(tensor, [256, 256], antialias=True))
    general["flip+normalise"], _ = timed(lambda: (F.horizontal_flip(small) - transform.mean) / transform.std)

    fast: dict[str, float] = {}
    fast["open (header)"], _ = timed(lambda: Image.open(path))

    scale = draft_scale(box[2], box[3], 256) if path.suffix == ".jpg" else 1

    def decode() -> Image.Image:
        img = Image.open(path)
        if scale > 1:
            img.draft(img.mode, (img.width // scale, img.height // scale))
        img.load()
        return img

    fast[f"decode (1/{scale})"], decoded = timed(decode)
    top, left, height, width = box
    region = (left / scale, top / scale, (left + width) / scale, (top + height) / scale)
    fast["crop/resize (uint8)"], pixels = timed(lambda: np.array(decoded.resize((256, 256), resample, box=region)))

    def finish() -> torch.Tensor:
        t = torch.from_numpy(pixels)
        t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
        return t.flip(-1).float().expand(3, -1, -1) * transform.scale_8bit + transform.bias

    fast["to tensor+flip+normalise"], _ = timed(finish)
    return {"float path": general, "8-bit path": fast}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=6, help="distinct chips per format and size")
    parser.add_argument("--reps", type=int, default=5, help="interleaved timing rounds (median)")
    parser.add_argument("--stages", action="store_true", help="also print a per-stage breakdown")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"device: cpu ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, Pillow {Image.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        chips = write_chips(root / "chips", args.count)
        print(f"\npre-training samples/s per worker (256 px out; target >= {TARGET:.0f}); now = this code, "
              "float = before (read_image + torchvision v2 on float32), packed = from LitData shards (sarmae data "
              "pack, side capped at 512)")
        print(f"{'format':<9}{'size':>6}  {'mode':<7}{'now':>8}{'float':>8}{'x':>7}  {'ms now':>7}{'packed':>8}")
        for ext, mode, size, how, now, old, packed in pretrain_rows(root, chips, args.reps):
            print(f"{ext + '/' + mode:<9}{size:>6}  {how:<7}{now:>8.0f}{old:>8.0f}{now / old:>7.2f}"
                  f"  {1e3 / now:>7.2f}{packed:>8.0f}{'' if now >= TARGET else '  now < target'}"
                  f"{'' if packed >= TARGET else '  packed < target'}")
        print("\nfine-tuning samples/s per worker (800 x 800 with boxes, resize + flip)")
        print(f"{'format':<9}{'size':>6}{'samples/s':>11}{'ms':>8}")
        for ext, mode, size, per_s in finetune_rows(root, chips, args.reps):
            print(f"{ext + '/' + mode:<9}{size:>6}{per_s:>11.0f}{1e3 / per_s:>8.2f}")
        if args.stages:
            for key in (("jpg", "L", 800), ("png", "L", 800), ("jpg", "RGB", 800), ("jpg", "L", 512)):
                for crop in (False, True):
                    print(f"\nstages, {key[0]}/{key[1]} {key[2]} px, {'crop' if crop else 'resize'} -> 256 (ms)")
                    for path_name, parts in stages(chips[key][0], crop).items():
                        total = sum(parts.values())
                        text = ", ".join(f"{k} {v:.2f} ({100 * v / total:.0f}%)" for k, v in parts.items())
                        print(f"  {path_name}: {total:.2f} = {text}")


if __name__ == "__main__":
    main()
