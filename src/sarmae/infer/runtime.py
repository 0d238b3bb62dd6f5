"""Exported detectors (``sarmae export``) run like checkpoints: ``load_detector("model.onnx" | "model.xml")``
gives a :class:`~sarmae.infer.detector_io.Detector` whose ``model`` is a :class:`RuntimeModel`, so prediction,
sliced scenes, evaluation and the Python API run it unchanged. The runtimes are optional (``sarmae[deploy]``)
and imported only here, when a model file is opened.

The runtime follows the file: ``.onnx`` -> ONNX Runtime (CPU), ``.xml`` -> OpenVINO (CPU, float32 inference
precision unless the model is INT8 and the CPU has native bf16: OpenVINO would otherwise pick bf16 on CPUs that
have it and drift from the PyTorch outputs). The file is parsed once, by the runtime, metadata included. Both
run with the process's thread budget and without busy-waiting, which on a shared 2-core machine costs more than it
gains.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sarmae.errors import CheckpointError, SarmaeError
from sarmae.precision import cpu_has_native_bf16

SUFFIXES = {".onnx": "onnxruntime", ".xml": "openvino"}
METADATA_KEY = "sarmae"  # the JSON an exported file carries (ONNX metadata_props / OpenVINO rt_info)


class MissingExtra(SarmaeError):
    """An optional dependency of the deploy extra is not installed."""


def require(module: str) -> Any:
    """``import module`` or one line naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{module} is not installed: exported models need the deploy extra, "
                           "pip install 'sarmae[deploy]'") from None


class RuntimeModel:
    """Callable like the torchvision detector in eval mode: a list of ``[3, H, W]`` float images in [0, 1] ->
    one ``{"boxes", "scores", "labels"}`` dict of CPU tensors per image (one image per run of the graph)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.path = Path(path)
        self.runtime = SUFFIXES[self.path.suffix]
        self.threads = int(threads or torch.get_num_threads())
        if self.runtime == "onnxruntime":
            ort = require("onnxruntime")
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = _opened(self.path, lambda: ort.InferenceSession(str(self.path), options,
                                                                      providers=["CPUExecutionProvider"]))
            self.metadata = _parsed(self.path, session.get_modelmeta().custom_metadata_map.get(METADATA_KEY))
            self._run = lambda image: session.run(["boxes", "scores", "labels"], {"image": image})
        else:
            ov = require("openvino")
            core = ov.Core()
            model = _opened(self.path, lambda: core.read_model(str(self.path)))
            self.metadata = _parsed(self.path, _rt_info(model))
            hints = {"INFERENCE_NUM_THREADS": self.threads}
            if not self.metadata.get("int8") or not cpu_has_native_bf16():
                hints["INFERENCE_PRECISION_HINT"] = "f32"
            compiled = _opened(self.path, lambda: core.compile_model(model, "CPU", hints))
            outputs = [compiled.output(name) for name in ("boxes", "scores", "labels")]

            def run(image: Any) -> list:
                result = compiled({"image": image})
                return [result[output] for output in outputs]

            self._run = run

    # the torch.nn.Module calls the inference code makes
    def to(self, device: Any) -> RuntimeModel:  # noqa: ARG002 (the runtime computes on the CPU whatever is asked)
        return self

    def eval(self) -> RuntimeModel:
        return self

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outputs = []
        for image in images:
            array = image.detach().float().cpu().unsqueeze(0).contiguous().numpy()
            boxes, scores, labels = self._run(array)
            outputs.append({"boxes": torch.from_numpy(boxes.copy()).float().reshape(-1, 4),
                            "scores": torch.from_numpy(scores.copy()).float(),
                            "labels": torch.from_numpy(labels.copy()).long()})
        return outputs


def read_metadata(path: Path) -> dict:
    """The JSON metadata ``sarmae export`` stored in an ONNX / OpenVINO model file (without loading a runtime)."""
    path = Path(path)
    if path.suffix == ".onnx":
        onnx = require("onnx")
        model = _opened(path, lambda: onnx.load(str(path), load_external_data=False))
        return _parsed(path, {p.key: p.value for p in model.metadata_props}.get(METADATA_KEY))
    ov = require("openvino")
    return _parsed(path, _rt_info(_opened(path, lambda: ov.Core().read_model(str(path)))))


def _opened(path: Path, open_model: Callable[[], Any]) -> Any:
    """``open_model()``, or one line when ``path`` is missing or is not a model file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    try:
        return open_model()
    except Exception as exc:  # noqa: BLE001 (a damaged or foreign file: one line)
        raise CheckpointError(f"{path}: cannot be read as a model ({str(exc).strip().splitlines()[0][:160]})") from None


def _rt_info(model: Any) -> str | None:
    """The metadata JSON of an OpenVINO model (its rt_info entry), if any."""
    return model.get_rt_info([METADATA_KEY]).astype(str) if model.has_rt_info([METADATA_KEY]) else None


def _parsed(path: Path, text: str | None) -> dict:
    if not text:
        raise CheckpointError(f"{path}: no sarmae metadata; export the detector with `sarmae export CHECKPOINT`")
    return json.loads(text)


__all__ = ["METADATA_KEY", "SUFFIXES", "MissingExtra", "RuntimeModel", "read_metadata", "require"]
