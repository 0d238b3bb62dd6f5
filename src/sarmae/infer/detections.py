"""What inference produces, shared by every writer: scene detections and the one COCO result record.

:class:`Detections` is the result of sliced inference (:mod:`sarmae.infer.sliced`) and the input of the file
writers (:mod:`sarmae.infer.geo`); :func:`coco_result` is the one rule for a COCO bbox result record (``bbox``
[x, y, w, h] rounded to 0.01 px, ``score`` to 1e-5), used by evaluation (:func:`sarmae.infer.metrics.
detections_to_coco`), ``predict``'s ``predictions.json`` and the scene writers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOX_DIGITS = 2  # 0.01 px: sub-pixel noise only bloats the json
SCORE_DIGITS = 5


@dataclass
class Detections:
    """Scene detections: ``boxes`` (N, 4) float64 xyxy scene px, ``scores`` (N,) float32, ``labels`` (N,) int64."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0, np.float32), np.zeros(0, np.int64))


def coco_result(image_id: int, category_id: int, box_xyxy: Sequence[float], score: float,
                file_name: str | None = None, category_name: str | None = None) -> dict:
    """One COCO bbox result: ``image_id``, ``category_id`` (the dataset's own id), ``bbox`` [x, y, w, h] from an
    xyxy box (computed in float64, rounded to :data:`BOX_DIGITS`) and ``score`` (rounded to :data:`SCORE_DIGITS`).
    ``file_name`` / ``category_name``, when given, follow ``image_id`` / ``category_id`` (predict's extras)."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    record: dict = {"image_id": int(image_id)}
    if file_name is not None:
        record["file_name"] = file_name
    record["category_id"] = int(category_id)
    if category_name is not None:
        record["category_name"] = category_name
    record["bbox"] = [round(x1, BOX_DIGITS), round(y1, BOX_DIGITS), round(x2 - x1, BOX_DIGITS),
                      round(y2 - y1, BOX_DIGITS)]
    record["score"] = round(float(score), SCORE_DIGITS)
    return record


__all__ = ["BOX_DIGITS", "SCORE_DIGITS", "Detections", "coco_result"]
