"""Loading a fine-tuned detector checkpoint (untrusted file: ``weights_only=True``) and picking a device."""

from __future__ import annotations

from pathlib import Path

import torch

from sarmae.errors import CheckpointError
from sarmae.models.checkpoints import read_state_dict


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"--device {name}: no CUDA device here; use --device cpu")
    return torch.device(name)


def load_detector(path: Path):
    """A :class:`ViTDetFinetuning` module from ``weights/best.ckpt`` / ``last.ckpt`` of a finetune run."""
    from sarmae.engine.finetune import ViTDetFinetuning

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; pass weights/best.ckpt of a finetune run")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not hparams or "classes" not in hparams:
        raise CheckpointError(f"{path}: not a sarmae detector checkpoint (made by 'sarmae finetune')")
    module = ViTDetFinetuning(hparams["cfg"], hparams["classes"])
    module.model.load_state_dict(read_state_dict(path))
    return module.eval()
