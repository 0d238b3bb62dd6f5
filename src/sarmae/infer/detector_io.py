"""Loading a fine-tuned detector for inference (untrusted file: ``weights_only=True``) and picking a device.

Inference stands on its own: a fine-tuning checkpoint (``weights/best.ckpt`` / ``last.ckpt``, a Lightning file
with ``hyper_parameters`` {cfg, classes} and a ``state_dict`` whose keys start with ``model.``) is opened with
:func:`sarmae.models.checkpoints.open_checkpoint`, the detector is rebuilt from its own config with
:func:`sarmae.models.vitdet.build_detector` and its weights are loaded strictly. No training code is involved.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sarmae.config import get_dotted
from sarmae.errors import CheckpointError, ConfigError, SarmaeError
from sarmae.models.checkpoints import open_checkpoint
from sarmae.models.vitdet import (
    SimpleFeaturePyramid,
    bf16_inference_copy,
    build_detector,
    keep_boxes_float32,
    set_max_dets,
)
from sarmae.precision import cpu_has_native_bf16

ADVICE = "pass weights/best.ckpt of a finetune run"
STATE_PREFIX = "model."  # the Lightning module holds the torchvision detector at ``self.model``


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


def inference_autocast(precision: str, device: torch.device):
    """The training precision (``trainer.precision``) as an autocast context on a GPU; none on CPU, where autocast
    re-casts every weight at every call (a bf16 CPU runs :func:`inference_model`'s bf16 copy instead) and for
    ``32-true``. Boxes stay float32 (:func:`sarmae.models.vitdet.keep_boxes_float32`)."""
    if torch.device(device).type != "cuda":
        return nullcontext()
    if str(precision) in ("bf16-mixed", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if str(precision) in ("16-mixed", "16"):
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` is a CPU with bf16 matrix instructions (AVX512-BF16 or AMX), where a bf16 forward takes
    ~0.6x the float32 time; on other CPUs bf16 is emulated and slower than float32."""
    return torch.device(device).type == "cpu" and cpu_has_native_bf16()


def inference_model(model: torch.nn.Module, device: torch.device | str, precision: str = "32-true"
                    ) -> torch.nn.Module:
    """``model`` in eval mode on ``device``, or, for a ViTDet trained in bf16 (``precision``, the run's
    ``trainer.precision``) on a :func:`native_bf16` CPU, its bf16 copy (:func:`sarmae.models.vitdet.
    bf16_inference_copy`: boxes stay float32, ``model`` itself is untouched). A float32-trained detector stays
    float32, so its outputs do not depend on the CPU it runs on."""
    model = model.to(device).eval()
    vitdet = isinstance(getattr(model, "backbone", None), SimpleFeaturePyramid)
    bf16 = vitdet and str(precision).startswith("bf16") and native_bf16(device)
    return bf16_inference_copy(model) if bf16 else model


@dataclass
class Detector:
    """A fine-tuned detector ready for inference: the torchvision Faster R-CNN (``model``) and what its checkpoint
    remembers: the run's ``cfg`` and ``classes`` = {"names": [...], "label_to_cat_id": {label: file category id}}.

    ``label_to_cat_id`` maps the detector's labels 1..K back to the dataset's category ids on every output.
    """

    model: torch.nn.Module
    cfg: dict
    classes: dict
    configured_dets: int
    label_to_cat_id: dict[int, int] = field(init=False)
    _inference: dict[str, torch.nn.Module] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.label_to_cat_id = {int(k): int(v) for k, v in self.classes["label_to_cat_id"].items()}

    def inference_model(self, device: torch.device | str) -> torch.nn.Module:
        """:func:`inference_model` of ``model``, made once per device (the bf16 copy takes about a second for
        ViT-B); a copy reflects the weights at its first use."""
        key = str(torch.device(device))
        if key not in self._inference:
            precision = (self.cfg.get("trainer") or {}).get("precision", "32-true")
            self._inference[key] = inference_model(self.model, device, precision)
        return self._inference[key]

    @classmethod
    def build(cls, cfg: dict, classes: dict) -> Detector:
        """Fresh (untrained) detector for a run config and its classes, set up as the training module sets it up:
        float32 boxes under autocast, ``eval.max_dets`` detections kept per image."""
        model = build_detector(cfg.get("model") or {}, num_classes=len(classes["names"]) + 1)
        keep_boxes_float32(model)
        detector = cls(model, cfg, classes, int(model.roi_heads.detections_per_img))
        detector.set_max_dets(int(get_dotted(cfg, "eval.max_dets", 100)))
        return detector

    @property
    def names(self) -> list[str]:
        return list(self.classes["names"])

    def class_info(self) -> dict:
        """Same layout as :func:`sarmae.data.loaders.class_info` of the dataset it was trained on."""
        return {"names": self.names, "label_to_cat_id": dict(self.label_to_cat_id)}

    def set_max_dets(self, max_dets: int) -> None:
        """COCO scores up to ``max_dets`` detections per image, so the detector must keep at least that many."""
        if not isinstance(self.model, torch.nn.Module):  # an exported model: the cap is part of its graph
            if max_dets > self.configured_dets:
                raise ConfigError(f"max_dets={max_dets}: this exported model keeps at most {self.configured_dets} "
                                  "detections per image; score fewer or export again with eval.max_dets raised")
            return
        set_max_dets(self.model, max_dets, self.configured_dets)

    def to(self, device: torch.device | str) -> Detector:
        self.model.to(device)
        return self

    def eval(self) -> Detector:
        self.model.eval()
        return self


def load_detector(path: Path) -> Detector:
    """A :class:`Detector` in eval mode from ``weights/best.ckpt`` / ``last.ckpt`` of a finetune run, or from a
    model exported by ``sarmae export`` (``.onnx``, OpenVINO ``.xml``: :mod:`sarmae.infer.runtime`).

    The file is memory-mapped, so the optimiser state of a large checkpoint is never read into RAM.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; {ADVICE}")
    if path.suffix in (".onnx", ".xml"):  # made by `sarmae export`: ONNX Runtime / OpenVINO
        from sarmae.infer.runtime import RuntimeModel

        model = RuntimeModel(path)
        meta = model.metadata
        return Detector(model, meta["cfg"], meta["classes"], int(meta["max_detections"]))  # type: ignore[arg-type]
    ckpt = open_checkpoint(path, mmap=True, missing=ADVICE, advice=ADVICE)
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "classes" not in hparams or "cfg" not in hparams:
        hint = " (it looks like an MAE pre-training checkpoint: fine-tune it first)" if _is_mae(hparams) else ""
        raise CheckpointError(f"{path}: not a sarmae detector checkpoint (made by 'sarmae finetune'){hint}")
    try:
        detector = Detector.build(hparams["cfg"], hparams["classes"])
    except SarmaeError as exc:
        raise CheckpointError(f"{path}: its config cannot be rebuilt ({exc})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: its config or classes cannot be read ({type(exc).__name__}: {exc})") from None
    state = _strip_prefix(ckpt.get("state_dict") or {}, STATE_PREFIX)
    try:
        missing, unexpected = detector.model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        reason = str(exc).strip().splitlines()[-1].strip()[:160]
        raise CheckpointError(f"{path}: weights do not fit the detector in its own config ({reason})") from None
    if missing or unexpected:  # strict, with a readable line instead of torch's key lists
        keys = (missing or unexpected)[:3]
        raise CheckpointError(
            f"{path}: weights do not fit the detector in its own config ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, e.g. {', '.join(keys)}); the file is damaged or not a sarmae detector"
        )
    return detector.eval()


def _strip_prefix(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}


def _is_mae(hparams: object) -> bool:
    cfg = hparams.get("cfg") if isinstance(hparams, dict) else None
    return isinstance(cfg, dict) and "decoder_embed_dim" in (cfg.get("model") or {})


__all__ = ["Detector", "inference_autocast", "inference_model", "load_detector", "native_bf16", "pick_device"]
