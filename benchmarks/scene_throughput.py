"""Large-scene throughput of sliced inference (megapixels/s) for the tiny and ViT-B detectors.

The scene is a mosaic of synthetic SAR chips written as a tiled GeoTIFF (window by window, so ``--size``
can be large); the detectors are randomly initialised (speed does not depend on the weights, except the
merge step, which sees few boxes above the score threshold here).

    python benchmarks/scene_throughput.py                      # 2048 x 2048 scene, tiny and ViT-B (800 px)
    python benchmarks/scene_throughput.py --size 10000 --configs vitdet_b_sardet100k --batch 16
    python benchmarks/scene_throughput.py --runtimes torch onnx-int8 openvino-int8    # exported (sarmae[deploy])
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.windows import Window

from sarmae.config import load_config
from sarmae.data.coco import SARDET_CLASSES
from sarmae.data.synth import generate_image
from sarmae.infer.detector_io import Detector
from sarmae.infer.sliced import predict_scene
from sarmae.precision import cpu_features


def write_scene(path: Path, size: int, chip: int = 512, seed: int = 0) -> Path:
    """A ``size`` x ``size`` uint8 UTM GeoTIFF tiled with synthetic chips, written one chip at a time."""
    rng = np.random.default_rng(seed)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint8", "tiled": True,
               "blockxsize": 256, "blockysize": 256, "compress": "deflate", "crs": "EPSG:32633",
               "transform": Affine(1.0, 0.0, 500000.0, 0.0, -1.0, 5000000.0)}
    with rasterio.open(path, "w", **profile) as dst:
        for y in range(0, size, chip):
            for x in range(0, size, chip):
                pixels, _ = generate_image(rng, chip)
                h, w = min(chip, size - y), min(chip, size - x)
                dst.write(pixels[None, :h, :w], window=Window(x, y, w, h))
    return path


def detector_module(config: str) -> Detector:
    """An untrained detector of ``config`` as a checkpoint would load it (its training precision included)."""
    names = list(SARDET_CLASSES)
    return Detector.build(load_config(config), {"names": names, "label_to_cat_id": {k + 1: k for k in range(6)}})


def exported(module: Detector, runtime: str, folder: Path) -> Detector:
    """``module`` exported for ``runtime`` (onnx, onnx-int8, openvino, openvino-int8; INT8 calibrated on random
    images: speed only) and loaded back as a detector."""
    from sarmae.infer.detector_io import load_detector
    from sarmae.infer.export import export_model, metadata_of

    fmt, _, int8 = runtime.partition("-")
    size = int(module.cfg["model"].get("img_size", 800))
    calibration = [np.random.default_rng(i).random((1, 3, size, size), dtype=np.float32) for i in range(4)]
    path = folder / f"{runtime}{'.onnx' if fmt == 'onnx' else '.xml'}"
    export_model(module, path, fmt, calibration if int8 else [], metadata_of(module, Path("untrained")))
    return load_detector(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="scene side in pixels (default 2048)")
    parser.add_argument("--configs", nargs="+", default=["vitdet_tiny", "vitdet_b_sardet100k"])
    parser.add_argument("--batch", type=int, default=None, help="tiles per batch (default: 2 on CPU, 8 on GPU)")
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--merge", default="nms", choices=["nms", "greedy"])
    parser.add_argument("--score", type=float, default=0.3)
    parser.add_argument("--runtimes", nargs="+", default=["torch"],
                        choices=["torch", "onnx", "onnx-int8", "openvino", "openvino-int8"])
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = args.batch or (8 if device.type == "cuda" else 2)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}, torch {torch.__version__}, CPU features: {' '.join(cpu_features())}, "
          f"scene {args.size}x{args.size} uint8, batch {batch}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        scene = write_scene(Path(tmp) / "scene.tif", args.size)
        print(f"scene written in {time.perf_counter() - t0:.1f} s")
        rows = []
        for config in args.configs:
            for runtime in args.runtimes:
                module = detector_module(config)
                if runtime != "torch":
                    module = exported(module, runtime, Path(tmp))
                tile = int(module.cfg["model"].get("img_size", 800))
                with torch.no_grad():  # warm-up (kernels, allocator) outside the timed run
                    module.inference_model(device)([torch.rand(3, tile, tile, device=device)])
                s = predict_scene(module, scene, Path(tmp) / f"{config}-{runtime}", overlap=args.overlap,
                                  merge=args.merge, batch_size=batch, score_threshold=args.score, device=device,
                                  progress=False)
                rows.append((f"{config} {runtime}", tile, s))
    print(f"{'config runtime':<36}{'tile':>6}{'tiles':>7}{'MP/s':>9}{'tiles/s':>9}{'read s':>8}{'infer s':>9}"
          f"{'merge s':>9}{'total s':>9}{'dets':>7}")
    for config, tile, s in rows:
        print(f"{config:<36}{tile:>6}{s['tiles_run']:>7}{s['megapixels_per_s']:>9.3f}"
              f"{s['tiles_run'] / s['seconds']:>9.2f}{s['read_s']:>8.2f}{s['infer_s']:>9.2f}{s['merge_s']:>9.3f}"
              f"{s['seconds']:>9.2f}{s['detections']:>7}")


if __name__ == "__main__":
    main()
