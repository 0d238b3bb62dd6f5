"""Unlabeled SAR images for MAE pre-training: folders, COCO jsons or single files, in any mix.

Pre-training wants every SAR image one can find, so sources are pooled: a folder is searched
recursively for :data:`IMAGE_EXTENSIONS` files (other files and hidden names such as macOS ``._x.jpg``
are ignored), a COCO json contributes its images (labels unused), an image file contributes itself.
Paths are sorted per source, so the same sources give the same order on every machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from sarmae.data.coco import image_candidates, load_coco_json, resolve_image_path, split_root
from sarmae.data.io import IMAGE_EXTENSIONS, IntensityScaling, open_8bit, read_image
from sarmae.data.transforms import MAETransform
from sarmae.errors import DataError


def find_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursive, following links once), sorted."""
    found: list[str] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop or a folder linked twice
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(
            os.path.join(dirpath, name)
            for name in filenames
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
        )
    return sorted(found)


def _coco_images(ann_file: Path) -> list[str]:
    """The images of a COCO json, resolved like :class:`~sarmae.data.coco.CocoDetection` does."""
    root, split = split_root(ann_file)
    paths = []
    for img in load_coco_json(ann_file)["images"]:
        found = resolve_image_path(root, split, img["file_name"])
        # A missing file keeps its expected path: reading it raises DataError, which the robust
        # wrapper skips, so one lost image does not stop the run.
        paths.append(str(found if found is not None else image_candidates(root, split, img["file_name"])[0]))
    return paths


class UnlabeledImages(Dataset):
    """Item ``i`` -> ``transform(image)``, image a float32 ``[3, H, W]`` tensor in [0, 1].

    With an :class:`~sarmae.data.transforms.MAETransform`, 8-bit chips (no ``nodata`` rule) skip the float
    image: the transform's 8-bit path decodes and resizes in uint8, the same sample up to rounding.
    """

    def __init__(
        self,
        sources: str | Path | list[str | Path],
        transform: Any = None,
        scaling: IntensityScaling | None = None,
    ) -> None:
        if isinstance(sources, (str, Path)):
            sources = [sources]
        self.transform = transform
        self.scaling = scaling
        self.paths: list[str] = []
        for source in map(Path, sources):
            if source.is_dir():
                self.paths.extend(find_images(source))
            elif source.suffix.lower() == ".json":
                self.paths.extend(_coco_images(source))
            elif source.is_file() and source.suffix.lower() in IMAGE_EXTENSIONS:
                self.paths.append(str(source))
            elif not source.exists():
                raise DataError(f"image source {source}: no such folder or file")
            else:
                raise DataError(f"image source {source}: not a folder, a COCO .json or an image file")
        if not self.paths:
            listed = ", ".join(str(s) for s in sources)
            raise DataError(f"no images found in {listed}; supported extensions: {', '.join(IMAGE_EXTENSIONS)}")

    def __len__(self) -> int:
        return len(self.paths)

    def image_path(self, i: int) -> Path:
        return Path(self.paths[i])

    def __getitem__(self, i: int) -> torch.Tensor:
        path = self.paths[i]
        if isinstance(self.transform, MAETransform) and (self.scaling is None or self.scaling.nodata is None):
            img = open_8bit(path)  # 8-bit chip: decode + resize in uint8, JPEG at reduced scale
            if img is not None:
                with img:
                    return self.transform.from_8bit(img)
        image = torch.from_numpy(read_image(path, self.scaling)).permute(2, 0, 1).contiguous()
        return self.transform(image) if self.transform is not None else image
