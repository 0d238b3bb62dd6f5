"""``sarmae export``: a fine-tuned detector as one self-describing ONNX or OpenVINO model, optionally INT8.

The exported graph is the whole torchvision detector, image to detections: ``image`` float32 ``[1, 3, H, W]`` in
[0, 1] (any H, W: the graph normalises, resizes to the training size and maps boxes back, as the PyTorch model
does) -> ``boxes`` ``[N, 4]`` (xyxy, input pixels), ``scores`` ``[N]``, ``labels`` ``[N]`` (1..K). What a user of
the file needs travels in its metadata (:data:`METADATA_KEY`, JSON): the class names and dataset category ids,
the run's config (input size, intensity scaling), the score threshold and detection cap baked into the graph, and
for INT8 which layers run in int8 and which stay float.

Export uses PyTorch's TorchScript-based ONNX exporter (opset 17): the dynamo exporter fails on torchvision's
batched NMS. During export torchvision's ``batched_nms`` is replaced by the same coordinate-offset trick without
its empty-input branch, so the graph has no ``If`` node (OpenVINO's quantiser cannot handle one); results are
unchanged. INT8 is post-training static quantisation by ONNX Runtime (QDQ, per-channel int8 weights, uint8
activations), calibrated on the user's images, restricted to the layers with weights (convolutions and the ViT /
box-head linears); attention products, softmax, norms, RoIAlign, NMS and box decoding stay float, because
quantising box coordinates and scores breaks detection. The OpenVINO model is converted from that ONNX file
(OpenVINO runs the QDQ pairs in int8), so both runtimes get the same quantisation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sarmae.errors import ConfigError, DataError
from sarmae.files import atomic_write
from sarmae.infer.detector_io import Detector, load_detector
from sarmae.infer.runtime import METADATA_KEY, require

FORMATS = ("onnx", "openvino")
OPSET = 17
# INT8 layers: the linears (ViT blocks: ~60 % of ViT-B's time; box-head fc). Quantising the convolutions too
# (pyramid, RPN, box head) moved the tiny test detector's val mAP by +1.3 points, the linears alone by +0.07.
QUANTISED_OPS = ("Gemm", "MatMul")  # layers with weights; everything else stays float


@dataclass
class ExportReport:
    """What :func:`export_detector` wrote: the model file, its metadata and (INT8) the layer split."""

    path: Path
    metadata: dict
    seconds: float
    int8_layers: int = 0
    float_layers: list[str] = field(default_factory=list)

    def summary(self) -> str:
        size = sum(p.stat().st_size for p in (self.path, self.path.with_suffix(".bin")) if p.is_file())
        text = f"wrote {self.path} ({size / 2**20:.1f} MB, {self.seconds:.0f} s)"
        if self.metadata.get("int8"):
            text += (f"; int8: {self.int8_layers} linear layers; float: "
                     + ", ".join(self.float_layers))
        return text


class _ImageToDetections(torch.nn.Module):
    """``[1, 3, H, W]`` -> (boxes, scores, labels) of that image: the detector's list-of-dicts API as tensors."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model([image[0]])[0]
        return out["boxes"], out["scores"], out["labels"]


def _batched_nms_without_branch(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                                iou_threshold: float) -> torch.Tensor:
    """torchvision's ``batched_nms`` (classes kept apart by offsetting boxes) minus its empty-input ``If``."""
    from torchvision.ops import nms

    top = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    return nms(boxes + (idxs.to(boxes) * (top + 1))[:, None], scores, iou_threshold)


@contextmanager
def _exportable_nms() -> Iterator[None]:
    from torchvision.ops import boxes as box_ops  # the module the RPN and the box head call it from

    saved, box_ops.batched_nms = box_ops.batched_nms, _batched_nms_without_branch
    try:
        yield
    finally:
        box_ops.batched_nms = saved


def metadata_of(detector: Detector, checkpoint: Path) -> dict:
    """Everything the exported file must say about itself (stored as JSON under :data:`METADATA_KEY`)."""
    model = detector.model
    return {
        "format_version": 1,
        "source": Path(checkpoint).name,
        "classes": detector.class_info(),
        "cfg": detector.cfg,
        "input": "image: float32 [1, 3, H, W], RGB in [0, 1] (grey repeated); normalised and resized inside",
        "img_size": int((detector.cfg.get("model") or {}).get("img_size") or 0),
        "mean": [float(v) for v in model.transform.image_mean],
        "std": [float(v) for v in model.transform.image_std],
        "score_threshold": float(model.roi_heads.score_thresh),
        "max_detections": int(model.roi_heads.detections_per_img),
        "outputs": {"boxes": "float32 [N, 4] xyxy, input pixels", "scores": "float32 [N]",
                    "labels": "int64 [N], 1..K (classes.names[label - 1])"},
        "int8": None,
    }


def export_onnx(detector: Detector, path: Path, metadata: dict) -> Path:
    """The whole detector as ONNX (float32) at ``path``, ``metadata`` in its ``metadata_props``."""
    onnx = require("onnx")
    require("onnxscript")  # (torch.onnx imports it)
    size = metadata["img_size"] or 256
    wrapper = _ImageToDetections(detector.model.float().eval())
    example = torch.rand(1, 3, size, size)

    def write(tmp: Path) -> None:
        with _exportable_nms(), torch.no_grad():
            torch.onnx.export(wrapper, (example,), str(tmp), dynamo=False, opset_version=OPSET,
                              input_names=["image"], output_names=["boxes", "scores", "labels"],
                              dynamic_axes={"image": {2: "height", 3: "width"}, "boxes": {0: "detections"},
                                            "scores": {0: "detections"}, "labels": {0: "detections"}})
        graph = onnx.load(str(tmp))
        onnx.helper.set_model_props(graph, {METADATA_KEY: json.dumps(metadata)})
        onnx.save(graph, str(tmp))

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript-exporter deprecation and tracer warnings (checked by parity)
        return atomic_write(path, write)


def quantise_onnx(src: Path, dst: Path, calibration: list[np.ndarray], metadata: dict) -> tuple[int, list[str]]:
    """INT8 copy of ``src`` at ``dst`` (ONNX Runtime static QDQ), calibrated on ``calibration`` (``[1, 3, H, W]``
    float32 arrays). Returns (layers quantised, op types left float)."""
    onnx = require("onnx")
    require("onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter({"image": image} for image in calibration)

        def get_next(self) -> dict | None:
            return next(self.items, None)

    prepared = dst.with_name(dst.stem + ".prepared.onnx")
    try:
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)  # (symbolic inference fails here)
        graph = onnx.load(str(prepared))
        constants = {i.name for i in graph.graph.initializer}
        constants |= {o for node in graph.graph.node if node.op_type == "Constant" for o in node.output}
        # products of two activations (attention q.k and attn.v) have no weights to quantise: keep them float
        activations_only = [node.name for node in graph.graph.node
                            if node.op_type == "MatMul" and not any(i in constants for i in node.input)]
        quantised = sum(1 for node in graph.graph.node
                        if node.op_type in QUANTISED_OPS and node.name not in activations_only)

        def write(tmp: Path) -> None:
            quantize_static(str(prepared), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            op_types_to_quantize=list(QUANTISED_OPS), nodes_to_exclude=activations_only,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
            model = onnx.load(str(tmp))
            onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(metadata)})
            onnx.save(model, str(tmp))

        floats = sorted({node.op_type for node in graph.graph.node if node.op_type not in QUANTISED_OPS}
                        & {"Conv", "ConvTranspose", "Softmax", "LayerNormalization", "RoiAlign", "NonMaxSuppression",
                           "TopK", "Einsum"})
        metadata["int8"] = {"quantised_layers": quantised, "float": ["attention MatMul", *floats],
                            "calibration_images": len(calibration)}
        atomic_write(dst, write)
        return quantised, metadata["int8"]["float"]
    finally:
        prepared.unlink(missing_ok=True)


def to_openvino(onnx_path: Path, xml_path: Path, metadata: dict) -> Path:
    """OpenVINO IR (``.xml`` + ``.bin``) of an exported ONNX file, metadata under ``rt_info[sarmae]``."""
    ov = require("openvino")
    model = ov.convert_model(str(onnx_path))
    model.set_rt_info(json.dumps(metadata), [METADATA_KEY])
    ov.save_model(model, str(xml_path), compress_to_fp16=False)  # fp16 weights would change the outputs
    return xml_path


def calibration_images(inputs: list[str], detector: Detector, count: int) -> list[np.ndarray]:
    """Up to ``count`` of the user's images as ``[1, 3, H, W]`` float32 in [0, 1], scaled as the run's data."""
    from sarmae.data.io import IntensityScaling, read_image
    from sarmae.infer.predict import expand_inputs

    scaling = IntensityScaling.from_config((detector.cfg.get("data") or {}).get("scaling"))
    images = []
    for path in expand_inputs(inputs)[:count]:
        try:
            image = read_image(path, scaling)
        except (DataError, OSError):
            continue
        images.append(np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32))
    if not images:
        raise DataError(f"--calib {' '.join(inputs)}: no readable image to calibrate INT8 on")
    return images


def export_model(detector: Detector, out: Path, fmt: str, calibration: list[np.ndarray], metadata: dict
                 ) -> tuple[int, list[str]]:
    """Write ``detector`` to ``out`` as ``fmt`` (onnx | openvino), INT8 when ``calibration`` images are given;
    returns (layers quantised, op types left float)."""
    int8 = bool(calibration)
    onnx_path = out if fmt == "onnx" and not int8 else out.with_name(out.stem + ".float.onnx")
    quantised, floats = 0, []
    try:
        export_onnx(detector, onnx_path, metadata)
        if int8:
            target = out if fmt == "onnx" else out.with_name(out.stem + ".int8.onnx")
            quantised, floats = quantise_onnx(onnx_path, target, calibration, metadata)
            if fmt == "openvino":
                try:
                    to_openvino(target, out, metadata)
                finally:
                    target.unlink(missing_ok=True)
        elif fmt == "openvino":
            to_openvino(onnx_path, out, metadata)
    finally:
        if onnx_path != out:
            onnx_path.unlink(missing_ok=True)
    return quantised, floats


def export_detector(checkpoint: Path, fmt: str = "onnx", out: Path | None = None, int8: bool = False,
                    calib: list[str] | None = None, calib_count: int = 32) -> ExportReport:
    """Export the detector of ``checkpoint`` (a ``sarmae finetune`` checkpoint) as ``fmt`` (onnx | openvino);
    ``int8`` needs ``calib`` (image files, folders or globs, up to ``calib_count`` used). ``out`` defaults to
    the checkpoint's name with ``.onnx`` / ``.xml`` (``-int8`` added for INT8)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    if int8 and not calib:
        raise ConfigError("--int8 needs --calib IMAGES (a few dozen of your own chips) to calibrate on")
    require("onnx")
    require("onnxruntime" if int8 or fmt == "onnx" else "openvino")
    if fmt == "openvino":
        require("openvino")
    started = time.perf_counter()
    checkpoint = Path(checkpoint)
    detector = load_detector(checkpoint)
    suffix = ".onnx" if fmt == "onnx" else ".xml"
    out = Path(out) if out else checkpoint.with_name(checkpoint.stem + ("-int8" if int8 else "") + suffix)
    if out.suffix != suffix:
        raise ConfigError(f"--out {out}: a {fmt} model file ends in {suffix}")
    metadata = metadata_of(detector, checkpoint)
    calibration = calibration_images(calib or [], detector, calib_count) if int8 else []
    quantised, floats = export_model(detector, out, fmt, calibration, metadata)
    return ExportReport(out, metadata, time.perf_counter() - started, quantised, floats)


__all__ = ["FORMATS", "ExportReport", "calibration_images", "export_detector", "export_model", "export_onnx",
           "metadata_of", "quantise_onnx", "to_openvino"]
