"""Loading a fine-tuned detector checkpoint (untrusted file: ``weights_only=True``) and picking a device."""

from __future__ import annotations

from pathlib import Path

import torch

from sarmae.errors import CheckpointError, SarmaeError


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA if present), ``cpu``, ``cuda`` or ``cuda:N``; an unusable choice is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CheckpointError(f"--device {name}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise CheckpointError(f"--device {name}: no CUDA device here; use --device cpu")
        if (device.index or 0) >= count:
            raise CheckpointError(f"--device {name}: only {count} CUDA device(s) here (cuda:0..cuda:{count - 1})")
    elif device.type != "cpu":
        raise CheckpointError(f"--device {name}: unsupported device type; use auto, cpu or cuda[:N]")
    return device


def load_detector(path: Path):
    """A :class:`ViTDetFinetuning` module in eval mode from ``weights/best.ckpt`` / ``last.ckpt`` of a finetune run.

    The file is memory-mapped, so the optimiser state of a large checkpoint is never read into RAM.
    """
    from sarmae.train.finetune import ViTDetFinetuning

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; pass weights/best.ckpt of a finetune run")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unusable file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason})") from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "classes" not in hparams or "cfg" not in hparams:
        hint = " (it looks like an MAE pre-training checkpoint: fine-tune it first)" if _is_mae(hparams) else ""
        raise CheckpointError(f"{path}: not a sarmae detector checkpoint (made by 'sarmae finetune'){hint}")
    try:
        module = ViTDetFinetuning(hparams["cfg"], hparams["classes"])
    except SarmaeError as exc:
        raise CheckpointError(f"{path}: its config cannot be rebuilt ({exc})") from None
    state = {k[len("model."):]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("model.")}
    try:
        missing, unexpected = module.model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        reason = str(exc).strip().splitlines()[-1].strip()[:160]
        raise CheckpointError(f"{path}: weights do not fit the detector in its own config ({reason})") from None
    if missing or unexpected:
        keys = (missing or unexpected)[:3]
        raise CheckpointError(
            f"{path}: weights do not fit the detector in its own config ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, e.g. {', '.join(keys)}); the file is damaged or not a sarmae detector"
        )
    return module.eval()


def _is_mae(hparams: object) -> bool:
    cfg = hparams.get("cfg") if isinstance(hparams, dict) else None
    return isinstance(cfg, dict) and "decoder_embed_dim" in (cfg.get("model") or {})
