"""The one box-drawing palette: a class label (1..K) always gets the same colour, in every rendered image
(``predict``'s renders, ``evaluate``'s samples.png, the scene previews)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# matplotlib's tab10, one colour per class label (1-based; cycles for more classes).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)


def class_colour(label: int) -> tuple[int, int, int]:
    """RGB colour of a training label 1..K."""
    return PALETTE[(int(label) - 1) % len(PALETTE)]


def draw_boxes(image: np.ndarray, boxes, labels, scores, names: list[str], width: int = 2) -> Image.Image:
    """``image`` float (H, W, 3) in [0, 1]; boxes xyxy pixels; labels 1..K; scores or None; returns an RGB image."""
    canvas = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    for box, label, score in zip(boxes, labels, scores):
        colour = class_colour(label)
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=colour, width=width)
        text = names[int(label) - 1] + ("" if score is None else f" {float(score):.2f}")
        draw.text((x1 + 2, max(0.0, y1 - 11)), text, fill=colour)
    return canvas


__all__ = ["PALETTE", "class_colour", "draw_boxes"]
