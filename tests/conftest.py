"""Shared test fixtures: real image files and tiny COCO / SARDet-100K datasets written in ``tmp_path``.

Fixtures (request them by name; do not import from this module):

* ``write_image(path, array, **tiff_kwargs) -> Path``: write ``array`` in the format named by the
  extension. ``.png``: uint8 gray/RGB/RGBA, uint16 gray or RGB (16-bit colour written by hand, Pillow
  cannot); ``.jpg``/``.bmp``: uint8; ``.tif``: any dtype and layout, extra kwargs go to ``tifffile.imwrite``
  (e.g. ``planarconfig="separate"``; GDAL nodata: ``extratags=[(42113, "s", 0, "-9999", True)]``).
* ``make_coco(root, split="train", images=..., annotations=..., categories=None, flat=False,
  keys_missing=("info", "licenses"), write_images=True) -> Path``: write ``ROOT/Annotations/{split}.json``
  and 8-bit images into ``ROOT/JPEGImages/{split}/`` (or flat ``ROOT/JPEGImages/``). Image pixels are dark
  noise with every annotated box painted 255, so image/box consistency can be checked after transforms.
  ``categories`` defaults to the six SARDet-100K classes with ids 0..5.
* ``tiny_coco``: a ready SARDet-like ``train`` split (see its docstring for the exact content).
* ``dies_while_saving(epoch)``: a context manager; the training run inside it dies (as from SIGKILL: no clean-up)
  while writing the checkpoint of 0-based ``epoch``: metrics.csv holds that epoch, ``weights/last.ckpt`` is the
  previous one's.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

SARDET_NAMES = ("ship", "aircraft", "car", "tank", "bridge", "harbor")


def _png16_rgb_bytes(array: np.ndarray) -> bytes:
    """Minimal 16-bit RGB PNG encoder (filter 0 on every row)."""
    h, w, _ = array.shape
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def save_image(path: str | Path, array: np.ndarray, **tiff_kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    if ext in (".tif", ".tiff"):
        tifffile.imwrite(path, array, **tiff_kwargs)
    elif ext == ".png" and array.dtype == np.uint16 and array.ndim == 3:
        path.write_bytes(_png16_rgb_bytes(array))
    elif ext == ".png" and array.dtype == np.uint16:
        Image.fromarray(array).save(path)  # Pillow writes 2-D uint16 as a 16-bit grayscale PNG
    else:
        if array.dtype != np.uint8:
            raise TypeError(f"{ext} test images must be uint8, got {array.dtype}")
        Image.fromarray(array).save(path, **({"quality": 95} if ext in (".jpg", ".jpeg") else {}))
    return path


def build_coco(
    root: str | Path,
    split: str = "train",
    images: list[dict] = (),
    annotations: list[dict] = (),
    categories: list[dict] | None = None,
    flat: bool = False,
    keys_missing: tuple[str, ...] = ("info", "licenses"),
    write_images: bool = True,
    seed: int = 0,
) -> Path:
    root = Path(root)
    rng = np.random.default_rng(seed)
    if categories is None:
        categories = [{"id": i, "name": name} for i, name in enumerate(SARDET_NAMES)]
    anns = [{"iscrowd": 0, "ignore": 0, "segmentation": [], **a} for a in annotations]
    for n, ann in enumerate(anns):
        ann.setdefault("id", n + 1)
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
    data = {"images": list(images), "annotations": anns, "categories": categories}
    for key, value in (("info", {"description": "test"}), ("licenses", [])):
        if key not in keys_missing:
            data[key] = value
    ann_file = root / "Annotations" / f"{split}.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(data))
    if write_images:
        folder = root / "JPEGImages" if flat else root / "JPEGImages" / split
        for img in images:
            pixels = rng.integers(10, 60, (img["height"], img["width"]), dtype=np.uint8)
            for ann in anns:
                if ann["image_id"] == img["id"]:
                    x, y, w, h = (int(round(v)) for v in ann["bbox"])
                    pixels[max(y, 0) : max(y + h, 0), max(x, 0) : max(x + w, 0)] = 255
            save_image(folder / img["file_name"], pixels)
    return ann_file


@pytest.fixture
def write_image():
    return save_image


@pytest.fixture
def make_coco():
    return build_coco


@pytest.fixture
def tiny_coco(tmp_path) -> SimpleNamespace:
    """``tmp_path/sardet``, split ``train``, SARDet categories 0..5, no ``info``/``licenses`` keys.

    * image 7 ``0000007.jpg`` 64x48 (W x H): ship [4, 6, 20, 10]; tank [50, 30, 30, 30] (clipped to
      [50, 30, 64, 48]); aircraft [70, 10, 5, 5] (outside, dropped); car crowd; bridge ``ignore=1``.
    * image 8 ``0000008.png`` 32x40: harbor [0, 0, 10, 12].
    * image 9 ``0000009.bmp`` 24x24: no annotation.
    """
    root = tmp_path / "sardet"
    images = [
        {"id": 7, "file_name": "0000007.jpg", "width": 64, "height": 48},
        {"id": 8, "file_name": "0000008.png", "width": 32, "height": 40},
        {"id": 9, "file_name": "0000009.bmp", "width": 24, "height": 24},
    ]
    annotations = [
        {"id": 101, "image_id": 7, "category_id": 0, "bbox": [4, 6, 20, 10]},
        {"id": 102, "image_id": 7, "category_id": 3, "bbox": [50, 30, 30, 30]},
        {"id": 103, "image_id": 7, "category_id": 1, "bbox": [70, 10, 5, 5]},
        {"id": 104, "image_id": 7, "category_id": 2, "bbox": [30, 20, 6, 6], "iscrowd": 1},
        {"id": 105, "image_id": 7, "category_id": 4, "bbox": [2, 30, 8, 8], "ignore": 1},
        {"id": 201, "image_id": 8, "category_id": 5, "bbox": [0, 0, 10, 12]},
    ]
    ann_file = build_coco(root, "train", images, annotations)
    return SimpleNamespace(root=root, split="train", ann_file=ann_file, images=images, annotations=annotations)


@pytest.fixture(scope="module")
def one_cpu_thread():
    """Tiny models: starting threads costs more than the maths, and on a busy 2-core machine two threads per
    process thrash (10x slower); one thread keeps these tests fast and their timing stable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _SimulatedKill(Exception):
    """Stands for SIGKILL: raised from inside the training loop, it ends the run with no clean-up."""


@pytest.fixture
def dies_while_saving(monkeypatch):
    from sarmae.train import runs

    @contextlib.contextmanager
    def dying(epoch: int):
        save = runs.EpochCheckpoints.on_train_epoch_end

        def dying_save(self, trainer, pl_module):
            if trainer.current_epoch == epoch:
                raise _SimulatedKill
            save(self, trainer, pl_module)

        monkeypatch.setattr(runs.EpochCheckpoints, "on_train_epoch_end", dying_save)
        try:
            with pytest.raises(_SimulatedKill):
                yield
        finally:
            monkeypatch.undo()

    return dying


@pytest.fixture
def sigterm_at_step(monkeypatch):
    """``disarm = sigterm_at_step(module, step)``: the scheduler's SIGTERM lands during optimiser step ``step`` of
    the training whose module (``sarmae.train.pretrain`` / ``finetune``) calls ``stop_point``; ``disarm()``
    restores it for the resumed run."""
    import signal

    def arm(module, step: int):
        real = module.stop_point

        def stop_point(trainer, batch_idx):
            if trainer.global_step == step:
                os.kill(os.getpid(), signal.SIGTERM)
            real(trainer, batch_idx)

        monkeypatch.setattr(module, "stop_point", stop_point)
        return lambda: monkeypatch.setattr(module, "stop_point", real)

    return arm
