"""sarmae: SAR object detection with masked auto-encoder pre-training.

Pipeline (the paper's Figure 1): ``data`` -> ``models`` (vit, mae, vitdet) ->
``train`` (pretrain, finetune) -> ``infer`` (predict, scenes, evaluate)
-> ``experiments`` (demo, tables, probes) -> ``cli``.

Python API (:mod:`sarmae.api`, imported on first use so ``import sarmae`` stays light)::

    from sarmae import Detector, MAE
    results = Detector.load("runs/finetune/sar/weights/best.ckpt").predict("images/")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["MAE", "Detector", "Result", "__version__"]
_API = ("MAE", "Detector", "Result")

if TYPE_CHECKING:
    from sarmae.api import MAE, Detector, Result


def __getattr__(name: str):
    if name in _API:
        from sarmae import api

        return getattr(api, name)
    raise AttributeError(f"module 'sarmae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
