"""The Python API: what ``sarmae predict`` / ``evaluate`` / ``reconstruct`` do, as objects (as Ultralytics'
``YOLO(path).predict(...)``)::

    from sarmae import Detector, MAE

    detector = Detector.load("runs/finetune/sar/weights/best.ckpt")
    results = detector.predict(["chip.png", "S1A_scene.tif"], score_threshold=0.3)
    results[1].to_geojson()                       # lon/lat polygons of a georeferenced scene
    detector.evaluate("/data/SARDet_100K", split="val")["mAP"]

    mae = MAE.load("runs/pretrain/mae_tiny")      # a pretrain run folder or its weights/last.ckpt
    panels = mae.reconstruct(["chip.png"])        # Figure 2's four panels

Nothing here is a second copy of the CLI: whole images go through :func:`sarmae.infer.predict.detect_chips`,
large ones through :func:`sarmae.infer.sliced.sliced_detect` (the rule of ``sarmae predict``: a side over 1.5
tiles, or a georeferenced raster), options through :func:`sarmae.infer.predict.resolve_options`, COCO records
through :func:`sarmae.infer.detections.coco_result`, GeoJSON through :func:`sarmae.infer.geo.geojson_collection`,
metrics through :func:`sarmae.infer.evaluate.evaluate_checkpoint` and the MAE panels through
:func:`sarmae.infer.reconstruct.reconstruction_panels`. Checkpoints are opened safely (``weights_only``) by the
CLI's loaders. Bad input raises the one-line :mod:`sarmae.errors` (``DataError`` / ``ConfigError`` /
``CheckpointError``).

Inputs: a path, glob or folder (as ``sarmae predict``), a numpy array ``(H, W)`` / ``(H, W, 3)`` of raw pixels
(treated like a file's pixels: uint8 / 255, deeper or float data through the checkpoint's ``data.scaling``), a
float torch tensor ``(3, H, W)`` already in [0, 1] (a 4-D tensor is a batch), or a list of those.
"""

from __future__ import annotations

import io
import os
import tempfile
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sarmae.data.io import IntensityScaling, bands_to_image, read_image, select_bands
from sarmae.data.scene import Georef, Scene, open_array_scene, open_scene
from sarmae.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sarmae.errors import CheckpointError, DataError
from sarmae.infer import detector_io
from sarmae.infer.detections import Detections, coco_result
from sarmae.infer.detector_io import load_detector, pick_device
from sarmae.infer.evaluate import evaluate_checkpoint
from sarmae.infer.geo import geojson_collection
from sarmae.infer.predict import detect_chips, expand_inputs, resolve_options
from sarmae.infer.reconstruct import (
    draw_figure,
    list_images,
    load_images,
    load_mae_checkpoint,
    model_input,
    reconstruction_panels,
)
from sarmae.infer.sliced import is_large, is_large_size, model_detector, sliced_detect
from sarmae.models.mae import MaskedAutoencoder

UNIT = IntensityScaling(mode="linear", vmin=0.0, vmax=1.0)  # float tensors are already in [0, 1]
INPUTS = ("a path, glob or folder, a numpy array (H, W) or (H, W, 3), a torch tensor (3, H, W) in [0, 1], "
          "or a list of those")
PathLike = str | os.PathLike


# -- results ----------------------------------------------------------------------------------------------------


@dataclass(repr=False, eq=False)
class Result:
    """Detections on one input, in that input's pixels (continuous, (0, 0) = top-left corner of the first pixel).

    ``boxes`` (N, 4) float64 xyxy; ``scores`` (N,) float32; ``labels`` the class names; ``category_ids`` (N,)
    int64, the training dataset's own ids; ``width`` x ``height`` the input's size; ``source`` its path (or
    ``array`` / ``tensor[i]``); ``georef`` the raster's :class:`~sarmae.data.scene.Georef` when it is
    georeferenced, else None; ``sliced`` the tiling statistics (``tile_size``, ``tiles``, ``tiles_run``, ...)
    when it went through sliced inference, None for the whole-image path.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: list[str]
    category_ids: np.ndarray
    width: int
    height: int
    source: str
    georef: Georef | None = None
    sliced: dict | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def __repr__(self) -> str:
        how = f", sliced into {self.sliced['tiles']} tiles" if self.sliced else ""
        geo = ", georeferenced" if self.georef is not None else ""
        return f"Result({self.source!r}, {self.width}x{self.height}, {len(self)} detections{how}{geo})"

    def to_coco(self, image_id: int = 0) -> list[dict]:
        """COCO bbox results (``image_id``, ``file_name``, ``category_id``, ``category_name``, ``bbox`` [x, y, w, h],
        ``score``): the records of ``sarmae predict``'s ``predictions.json``."""
        return [coco_result(image_id, cat_id, box, score, file_name=self.source, category_name=label)
                for box, score, cat_id, label in zip(self.boxes, self.scores, self.category_ids, self.labels)]

    def to_geojson(self) -> dict:
        """A GeoJSON FeatureCollection of box polygons, as ``sarmae predict`` writes for scenes: WGS84 lon/lat when
        georeferenced, else pixel coordinates (x right, y down; the collection's ``sarmae.coordinates`` says so)."""
        names = list(dict.fromkeys(self.labels))
        label_of = {name: k + 1 for k, name in enumerate(names)}
        labels = np.array([label_of[name] for name in self.labels], np.int64)
        cat_ids = {label_of[name]: int(c) for name, c in zip(self.labels, self.category_ids)}
        dets = Detections(np.asarray(self.boxes, np.float64).reshape(-1, 4), np.asarray(self.scores), labels)
        return geojson_collection(dets, names, cat_ids, self.georef, self.source)


# -- inputs -----------------------------------------------------------------------------------------------------


@dataclass
class _Input:
    """One image to detect on: a file (``path``) or raw pixels in memory (``bands`` (H, W, 1 or 3))."""

    name: str
    path: Path | None = None
    bands: np.ndarray | None = None
    scaling: IntensityScaling | None = None  # None: the detector's; UNIT for float tensors


def _inputs(source: Any, name: str | None = None) -> list[_Input]:
    if isinstance(source, (str, os.PathLike)):
        return [_Input(str(path), path=path) for path in expand_inputs([os.fspath(source)])]
    if isinstance(source, np.ndarray):
        return [_array_input(source, name or "array")]
    if isinstance(source, torch.Tensor):
        if source.ndim == 4:
            return [_tensor_input(t, f"{name or 'tensor'}[{i}]") for i, t in enumerate(source)]
        return [_tensor_input(source, name or "tensor")]
    if isinstance(source, (list, tuple)) and name is None:
        if not source:
            raise DataError(f"an empty list of inputs; pass {INPUTS}")
        items: list[_Input] = []
        for i, item in enumerate(source):
            kind = "tensor" if isinstance(item, torch.Tensor) else "array"
            items += _inputs(item, f"{kind}[{i}]")
        return items
    hint = " (PIL images: pass np.asarray(image))" if type(source).__module__.startswith("PIL") else ""
    raise DataError(f"input of type {type(source).__name__} is not supported{hint}; pass {INPUTS}")


def _array_input(array: np.ndarray, name: str) -> _Input:
    if array.dtype.kind not in "buifc":
        raise DataError(f"{name}: dtype {array.dtype} holds no pixels; use uint8, uint16 or float arrays")
    if array.ndim == 3 and array.shape[2] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        raise DataError(f"{name}: shape {tuple(array.shape)} looks channels-first; numpy images are (H, W) or "
                        "(H, W, 3): pass array.transpose(1, 2, 0)")
    if array.ndim not in (2, 3):
        raise DataError(f"{name}: shape {tuple(array.shape)}; numpy images are (H, W) or (H, W, 3)")
    if 0 in array.shape[:2]:
        raise DataError(f"{name}: empty image {tuple(array.shape)}")
    return _Input(name, bands=select_bands(array, Path(name)))  # 1 band kept, RGBA -> RGB, 2 or > 4 refused


def _tensor_input(tensor: torch.Tensor, name: str) -> _Input:
    t = tensor.detach().cpu()
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise DataError(f"{name}: shape {tuple(tensor.shape)}; tensors are images (3, H, W) (or (1, H, W), "
                        "(H, W), a batch (N, 3, H, W)) in [0, 1]")
    if not t.is_floating_point():  # integer pixels: raw values, as a file's
        return _array_input(t.permute(1, 2, 0).numpy(), name)
    array = t.float().permute(1, 2, 0).numpy()
    finite = array[np.isfinite(array)]
    if finite.size and (finite.min() < 0.0 or finite.max() > 1.0):
        raise DataError(f"{name}: values span [{finite.min():.4g}, {finite.max():.4g}]; float tensors are images "
                        "scaled to [0, 1] (pass raw pixels as a numpy array to apply the checkpoint's data.scaling)")
    return _Input(name, bands=array, scaling=UNIT)


def _image(item: _Input, scaling: IntensityScaling) -> np.ndarray:
    """Float32 (H, W, 3) in [0, 1], as :func:`sarmae.data.io.read_image` makes it."""
    if item.path is not None:
        return read_image(item.path, scaling)
    rule = item.scaling or scaling
    image, valid = bands_to_image(item.bands, rule, rule.nodata)
    if not valid.any():
        raise DataError(f"{item.name}: no valid pixel (all NaN, inf, nodata or, in db mode, <= 0)")
    return image


def _open(item: _Input, scaling: IntensityScaling) -> Scene:
    """A :class:`~sarmae.data.scene.Scene` with one frozen intensity rule, for a file or for caller's pixels."""
    if item.path is not None:
        return open_scene(item.path, scaling)
    return open_array_scene(item.bands, item.name, item.scaling or scaling)


# -- the detector -----------------------------------------------------------------------------------------------


def _checkpoint_file(checkpoint: Any, names: tuple[str, ...], what: str) -> Path:
    """A checkpoint file, or the first of ``weights/NAME`` (then ``NAME``) in a run folder."""
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise CheckpointError(f"checkpoint {checkpoint!r}: pass the path of a {what} checkpoint or run folder")
    path = Path(checkpoint)
    if path.is_dir():
        for name in names:
            for candidate in (path / "weights" / name, path / name):
                if candidate.is_file():
                    return candidate
        raise CheckpointError(f"{path}: a folder without weights/{' or weights/'.join(names)}; pass a {what} "
                              "checkpoint or run folder")
    return path


class Detector(detector_io.Detector):
    """A fine-tuned ViTDet ready for inference: ``Detector.load(checkpoint)``, then :meth:`predict` (or call it)
    and :meth:`evaluate`. It is the loaded detector of :func:`sarmae.infer.detector_io.load_detector` (``model``,
    ``cfg``, ``classes``, ``names``, ``label_to_cat_id``) plus the ``device`` it runs on and its ``checkpoint``."""

    checkpoint: Path | None = None
    device: torch.device = torch.device("cpu")

    @classmethod
    def load(cls, checkpoint: PathLike, device: str | torch.device | None = None) -> Detector:
        """From ``weights/best.ckpt`` / ``last.ckpt`` of ``sarmae finetune`` (or the run folder: best, else last),
        opened safely; ``device``: None / ``auto`` (CUDA if present), ``cpu``, ``cuda`` or ``cuda:N``."""
        path = _checkpoint_file(checkpoint, ("best.ckpt", "last.ckpt"), "finetune")
        loaded = load_detector(path)
        detector = cls(loaded.model, loaded.cfg, loaded.classes, loaded.configured_dets)
        detector.checkpoint = path
        return detector.to(pick_device(str(device or "auto"))).eval()

    def to(self, device: torch.device | str) -> Detector:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def __repr__(self) -> str:
        size = (self.cfg.get("model") or {}).get("img_size")
        return f"Detector({str(self.checkpoint)!r}, classes={self.names}, img_size={size}, device={self.device})"

    def predict(
        self,
        source: Any,
        score_threshold: float = 0.05,
        *,
        sliced: str = "auto",
        tile_size: int | None = None,
        overlap: float = 0.2,
        merge: str = "nms",
        merge_iou: float = 0.5,
        full_image_pass: bool = False,
        batch_size: int = 4,
        scaling: IntensityScaling | dict | str | None = None,
        progress: bool = False,
    ) -> list[Result]:
        """Detect objects in ``source`` (see the module docstring); one :class:`Result` per image, in input order.

        Options are ``sarmae predict``'s: inputs with a side over 1.5 ``tile_size`` (default: the training size)
        and georeferenced rasters go through sliced inference (``sliced="always"`` / ``"never"`` overrides),
        ``scaling`` defaults to the checkpoint's ``data.scaling``. An unreadable image is a ``DataError``.
        """
        scaling, tile = resolve_options(self, sliced, tile_size, overlap, merge, merge_iou, batch_size,
                                        score_threshold, scaling)
        results: list[Result] = []
        batch: list[_Input] = []

        def run_batch() -> None:
            images = [_image(item, scaling) for item in batch]
            found = detect_chips(self, images, self.device, score_threshold) if images else []
            for item, image, (boxes, labels, scores) in zip(batch, images, found):
                results.append(self._result(item.name, boxes.double().numpy(), scores.numpy(), labels.numpy(),
                                            image.shape[1], image.shape[0]))
            batch.clear()

        for item in _inputs(source):
            if sliced == "always" or (sliced == "auto" and self._is_large(item, tile)):
                run_batch()
                with _open(item, scaling) as scene:
                    dets, stats = sliced_detect(scene, model_detector(self, self.device), tile, overlap, merge,
                                                merge_iou, "iou", full_image_pass, batch_size, score_threshold,
                                                progress)
                    results.append(self._result(item.name, dets.boxes, dets.scores, dets.labels, scene.width,
                                                scene.height, scene.georef if scene.georef.ok else None,
                                                {"tile_size": tile, **stats}))
            else:
                batch.append(item)
                if len(batch) == batch_size:
                    run_batch()
        run_batch()
        return results

    __call__ = predict

    @staticmethod
    def _is_large(item: _Input, tile: int) -> bool:
        if item.path is not None:
            return is_large(item.path, tile)
        return is_large_size(item.bands.shape[1], item.bands.shape[0], tile)

    def _result(self, source: str, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, width: int,
                height: int, georef: Georef | None = None, sliced: dict | None = None) -> Result:
        labels = [int(k) for k in labels]
        return Result(
            boxes=np.asarray(boxes, np.float64).reshape(-1, 4), scores=np.asarray(scores, np.float32),
            labels=[self.names[k - 1] for k in labels],
            category_ids=np.array([self.label_to_cat_id[k] for k in labels], np.int64),
            width=int(width), height=int(height), source=source, georef=georef, sliced=sliced,
        )

    def evaluate(self, root: PathLike, split: str = "val", out: PathLike | None = None, max_dets: int = 100,
                 batch_size: int = 4, verbose: bool = True) -> dict:
        """COCO metrics on ``ROOT/Annotations/{split}.json``: the numbers of ``sarmae evaluate`` for this checkpoint
        (:func:`~sarmae.infer.evaluate.evaluate_checkpoint`: ``mAP``, ``AP50``, ``AP75``, ``mAP_s/m/l``,
        ``per_class``; NaN where undefined). ``out`` keeps its metrics.json, results.json and samples.png;
        ``verbose`` prints the Table 1 row."""
        if self.checkpoint is None:
            raise CheckpointError("this Detector was not loaded from a checkpoint; use Detector.load(PATH)")
        with tempfile.TemporaryDirectory() as tmp:
            printed = io.StringIO()
            with redirect_stdout(printed):
                metrics = evaluate_checkpoint(self.checkpoint, Path(root), split, Path(out or tmp), max_dets,
                                              batch_size, str(self.device))
        if verbose:
            lines = printed.getvalue().splitlines(keepends=True)
            print("".join(line for line in lines if out is not None or not line.startswith("wrote ")), end="")
        return metrics


# -- the masked autoencoder -------------------------------------------------------------------------------------


class MAE:
    """A pre-trained masked autoencoder: ``MAE.load(run)``, :meth:`reconstruct` (paper Figure 2) and
    :meth:`encoder_state_dict` (timm ``VisionTransformer`` keys, what ``init=sar`` fine-tuning loads)."""

    def __init__(self, model: MaskedAutoencoder, cfg: dict, checkpoint: Path | None = None,
                 device: str | torch.device | None = None) -> None:
        self.model, self.cfg, self.checkpoint = model.eval(), cfg, checkpoint
        self.device = pick_device(str(device or "auto"))
        self.model.to(self.device)
        data = cfg.get("data") or {}
        self.mean = tuple(data.get("mean") or IMAGENET_MEAN)
        self.std = tuple(data.get("std") or IMAGENET_STD)
        self.scaling = IntensityScaling.from_config(data.get("scaling"))

    @classmethod
    def load(cls, checkpoint: PathLike, device: str | torch.device | None = None) -> MAE:
        """From ``weights/last.ckpt`` (or ``weights/epochNNN.ckpt``) of ``sarmae pretrain``, or the run folder;
        opened safely. ``device`` as for :meth:`Detector.load`."""
        path = _checkpoint_file(checkpoint, ("last.ckpt",), "pretrain")
        model, cfg = load_mae_checkpoint(path)
        return cls(model, cfg, path, device)

    @property
    def img_size(self) -> int:
        return int(self.model.patch_embed.img_size[0])

    def __repr__(self) -> str:
        return (f"MAE({str(self.checkpoint)!r}, img_size={self.img_size}, embed_dim={self.model.embed_dim}, "
                f"target={self.model.target}, device={self.device})")

    def reconstruct(self, images: Any, seed: int = 0, out: PathLike | None = None) -> dict[str, torch.Tensor]:
        """The four panels of Figure 2 ("original", "masked input", "reconstruction", "reconstruction + visible"),
        each (N, 3, S, S) float in [0, 1] on the CPU, S the pre-training size. ``images``: paths, folders
        (unreadable files are skipped with a warning), numpy arrays or tensors as for :meth:`Detector.predict`,
        resized as in pre-training; ``seed`` draws the mask; ``out`` also writes the figure as a PNG."""
        batch, names = self._batch(images)
        panels = reconstruction_panels(self.model, batch.to(self.device), seed)
        if out is not None:
            draw_figure(panels, self.mean, self.std, Path(out), row_names=names)
        mean, std = torch.tensor(self.mean).view(1, 3, 1, 1), torch.tensor(self.std).view(1, 3, 1, 1)
        return {name: (panel.float().cpu() * std + mean).clamp(0, 1) for name, panel in panels.items()}

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights with timm ``VisionTransformer`` key names (the decoder left out)."""
        return self.model.encoder_state_dict()

    def _batch(self, images: Any) -> tuple[torch.Tensor, list[str]]:
        """Normalised (N, 3, S, S) inputs and their names; files through the figure's own loader."""
        items = images if isinstance(images, (list, tuple)) else [images]
        if not items:
            raise DataError(f"an empty list of images; pass {INPUTS}")
        size, parts, names = self.img_size, [], []
        for i, item in enumerate(items):
            if isinstance(item, (str, os.PathLike)):
                batch, used = load_images(list_images([item]), size, self.mean, self.std, self.scaling)
                parts.append(batch)
                names += [path.name for path in used]
                continue
            for one in _inputs(item, f"{'tensor' if isinstance(item, torch.Tensor) else 'array'}[{i}]"):
                parts.append(model_input(_image(one, self.scaling), size, self.mean, self.std)[None])
                names.append(one.name)
        return torch.cat(parts), names


__all__ = ["MAE", "Detector", "Result"]
