"""Long runs must not die on one bad file among 100k: bad samples become ``None`` and are counted.

:class:`SkipBadSamples` turns a ``DataError`` / ``OSError`` of one item into ``None`` plus one warning
line; the collate functions drop the ``None`` items and return how many they dropped, so the training
module can report the count at epoch end.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import Dataset

from sarmae.errors import DataError

log = logging.getLogger(__name__)


class SkipBadSamples(Dataset):
    """Wrap ``dataset``: a failing item gives ``None`` (or re-raises when ``strict``).

    Other attributes (``coco_gt``, ``label_to_cat_id``...) are read through to the wrapped dataset.
    """

    def __init__(self, dataset: Any, strict: bool = False) -> None:
        self.dataset = dataset
        self.strict = strict

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        try:
            return self.dataset[i]
        except (DataError, OSError) as exc:
            if self.strict:
                raise
            message = str(exc)
            if isinstance(exc, OSError) and hasattr(self.dataset, "image_path"):
                message = f"{self.dataset.image_path(i)}: {exc}"
            log.warning("skipping bad sample %d: %s", i, message)
            return None

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not yet set (e.g. while unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def collate_skip_bad(batch: list[torch.Tensor | None]) -> tuple[torch.Tensor, int]:
    """MAE batches: ``[N, 3, H, W]`` of the good items (``[0]`` if none) and the number skipped."""
    good = [item for item in batch if item is not None]
    images = torch.stack(good) if good else torch.empty(0)
    return images, len(batch) - len(good)


def collate_detection(batch: list[tuple[Any, dict] | None]) -> tuple[list[torch.Tensor], list[dict], int]:
    """Detection batches: lists of images ``[3, H, W]`` (sizes may differ) and targets, and the number skipped."""
    good = [item for item in batch if item is not None]
    return [img for img, _ in good], [target for _, target in good], len(batch) - len(good)
