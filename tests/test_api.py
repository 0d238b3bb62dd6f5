"""The Python API (``from sarmae import Detector, MAE``): the README example runs verbatim; every input kind gives the
CLI's detections; large and georeferenced inputs are sliced; COCO / GeoJSON / metrics match the CLI's; one-line errors.

Uses the tiny ViTDet trained once per session by test_finetune.py and a one-epoch tiny MAE run.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sarmae import MAE, Detector, Result
from sarmae.config import load_config
from sarmae.data.io import read_image
from sarmae.errors import CheckpointError, ConfigError, DataError, SarmaeError
from sarmae.infer.evaluate import evaluate_checkpoint, json_safe
from sarmae.infer.predict import predict
from sarmae.infer.reconstruct import COLUMNS
from sarmae.train.pretrain import run_pretrain
from test_finetune import CAT_IDS, trained_run
from test_reconstruct import TINY_MODEL as TINY_MAE
from test_reconstruct import speckled_blobs

README = Path(__file__).resolve().parents[1] / "README.md"
NAMES = ["ship", "aircraft", "car", "tank", "bridge", "harbor"]
LOW = 0.01  # score threshold: a barely trained model still has detections above it


def readme_example() -> str:
    """The ```python block of the README's "## Python API" section."""
    section = README.read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("\n```", 1)[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def chips(trained) -> list[Path]:
    return sorted((trained.parent / "synth" / "JPEGImages" / "val").glob("*.png"))


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory, one_cpu_thread) -> Path:
    """A one-epoch tiny pre-training run (its folder)."""
    folder = tmp_path_factory.mktemp("api_mae_images")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(speckled_blobs(rng)).save(folder / f"{i:03d}.png")
    overrides = [f"model.{k}={v}" for k, v in TINY_MAE.items()] + [
        f"data.images={folder}", f"out={tmp_path_factory.mktemp('api_mae_run')}", "epochs=1", "batch_size=2",
        "data.workers=0", "figure.every=0",
    ]
    return run_pretrain(load_config("mae_tiny", overrides))


@pytest.fixture(scope="module")
def readme(trained, chips, mae_run) -> dict:
    """The README's example executed verbatim with the tiny runs; returns its variables."""
    namespace = {"ckpt": str(trained / "weights" / "best.ckpt"), "images": [str(p) for p in chips[:2]],
                 "data_root": str(trained.parent / "synth"), "mae_run": str(mae_run)}
    exec(compile(readme_example(), f"{README}#python-api", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def detector(trained, one_cpu_thread) -> Detector:
    return Detector.load(trained / "weights" / "best.ckpt", device="cpu")


def same_detections(a: Result, b: Result, atol: float = 1e-3) -> None:
    assert len(a) == len(b) > 0 and a.labels == b.labels and (a.width, a.height) == (b.width, b.height)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=atol)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
    np.testing.assert_array_equal(a.category_ids, b.category_ids)


def test_readme_example_runs_verbatim(readme, capsys):
    results = readme["results"]
    assert len(results) == 2 and all(isinstance(r, Result) for r in results)
    assert [r.source for r in results] == readme["images"] and all(r.sliced is None for r in results)
    assert isinstance(readme["records"], list) and readme["collection"]["type"] == "FeatureCollection"
    assert {"mAP", "AP50", "per_class"} <= set(readme["metrics"])
    assert list(readme["panels"]) == list(COLUMNS)
    assert "patch_embed.proj.weight" in readme["encoder"]
    assert not any(k.startswith("decoder_") or k == "mask_token" for k in readme["encoder"])
    assert isinstance(readme["detector"], Detector) and isinstance(readme["mae"], MAE)


def test_import_stays_light_and_exports_the_api():
    code = "import sys, sarmae; assert 'torch' not in sys.modules, 'import sarmae pulled torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
    import sarmae

    assert {"Detector", "MAE", "Result"} <= set(dir(sarmae)) and sarmae.Detector is Detector
    with pytest.raises(AttributeError):
        sarmae.nothing_here  # noqa: B018


def test_path_folder_array_tensor_and_list_give_the_same_boxes(detector, chips, tmp_path):
    chip = chips[0]
    folder = tmp_path / "folder"
    folder.mkdir()
    for path in chips[:3]:
        shutil.copy(path, folder / path.name)
    by_path = detector.predict(chip, score_threshold=LOW)
    assert len(by_path) == 1
    by_path = by_path[0]
    by_folder = detector.predict(str(folder), score_threshold=LOW)
    assert [Path(r.source).name for r in by_folder] == [p.name for p in chips[:3]]
    with Image.open(chip) as im:
        array = np.asarray(im)
    tensor = torch.from_numpy(read_image(chip)).permute(2, 0, 1)
    mixed = detector([str(chip), array, tensor], score_threshold=LOW)
    assert [r.source for r in mixed] == [str(chip), "array[1]", "tensor[2]"]
    for other in (by_folder[0], detector.predict(array, score_threshold=LOW)[0],
                  detector.predict(tensor, score_threshold=LOW)[0], detector.predict(tensor[None], LOW)[0], *mixed):
        same_detections(by_path, other)
    assert (by_path.width, by_path.height) == (256, 256) and by_path.georef is None and by_path.sliced is None
    assert repr(by_path).startswith(f"Result({str(chip)!r}, 256x256, {len(by_path)} detections")


def test_to_coco_is_the_cli_record_and_to_geojson_is_in_pixels(detector, trained, chips, tmp_path):
    result = detector.predict(chips[0], score_threshold=LOW)[0]
    records = result.to_coco(image_id=1)
    assert len(records) == len(result) > 0
    for record, label in zip(records, result.labels):
        assert list(record) == ["image_id", "file_name", "category_id", "category_name", "bbox", "score"]
        assert record["image_id"] == 1 and record["category_id"] in CAT_IDS and record["category_name"] == label
        assert NAMES[CAT_IDS.index(record["category_id"])] == label
        x, y, w, h = record["bbox"]
        assert w >= 0 and h >= 0 and x + w <= 256.01 and y + h <= 256.01 and record["score"] >= LOW
    cli = predict(trained / "weights" / "best.ckpt", [str(chips[0])], tmp_path / "cli", score_threshold=LOW,
                  device="cpu")
    assert [(r["category_id"], r["file_name"]) for r in cli] == [(r["category_id"], r["file_name"]) for r in records]
    for mine, theirs in zip(records, cli):
        assert mine["bbox"] == pytest.approx(theirs["bbox"], abs=0.02) and mine["score"] == pytest.approx(
            theirs["score"], abs=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not georeferenced" warning: the collection says it
        collection = result.to_geojson()
    assert collection["type"] == "FeatureCollection" and collection["sarmae"]["coordinates"].startswith("pixel")
    assert len(collection["features"]) == len(result)
    feature = collection["features"][0]
    assert feature["geometry"]["type"] == "Polygon" and feature["properties"]["category_name"] == result.labels[0]
    x1, y1, x2, y2 = result.boxes[0]
    ring = feature["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 5
    assert {round(p[0], 3) for p in ring} == {round(x1, 3), round(x2, 3)}
    assert {round(p[1], 3) for p in ring} == {round(y1, 3), round(y2, 3)}


def test_large_inputs_go_through_sliced_inference(detector, chips, tmp_path):
    tiles = [np.asarray(Image.open(p)) for p in chips[:4]]
    mosaic = np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)], axis=0)
    path = tmp_path / "mosaic.png"
    Image.fromarray(mosaic).save(path)
    by_path, by_array = detector.predict([str(path), mosaic], score_threshold=LOW)
    # 512 px > 1.5 tiles of 256: a 3 x 3 grid (starts 0, 205, 256 with overlap 0.2)
    assert by_path.sliced["tiles"] == by_array.sliced["tiles"] == 9 and by_path.sliced["tile_size"] == 256
    assert (by_path.width, by_path.height) == (512, 512) and "9 tiles" in repr(by_path)
    same_detections(by_path, by_array)
    whole = detector.predict(path, score_threshold=LOW, sliced="never")[0]
    assert whole.sliced is None and (whole.width, whole.height) == (512, 512)
    small = detector.predict(chips[0], score_threshold=LOW, sliced="always")[0]
    assert small.sliced["tiles"] == 1


def test_georeferenced_raster_is_sliced_and_its_geojson_is_lonlat(detector, chips, tmp_path):
    import rasterio
    from affine import Affine

    with Image.open(chips[0]) as im:
        chip = np.asarray(im.convert("L"))
    scene = tmp_path / "geo.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=256, height=256, count=1, dtype="uint8", crs="EPSG:4326",
                       transform=Affine(1e-4, 0, 10.0, 0, -1e-4, 50.0)) as dst:
        dst.write(chip[None])
    result = detector.predict(scene, score_threshold=LOW)[0]  # small, but georeferenced: sliced (one tile)
    assert result.sliced["tiles"] == 1 and result.georef is not None and result.georef.kind == "affine"
    assert len(result) > 0 and (result.width, result.height) == (256, 256)
    collection = result.to_geojson()
    assert collection["sarmae"]["coordinates"] == "WGS84 lon/lat" and len(collection["features"]) == len(result)
    for feature in collection["features"]:
        for lon, lat in feature["geometry"]["coordinates"][0]:
            assert 10.0 - 1e-9 <= lon <= 10.0256 + 1e-9 and 49.9744 - 1e-9 <= lat <= 50.0 + 1e-9


def test_evaluate_equals_evaluate_checkpoint(readme, trained, tmp_path, capsys):
    expected = evaluate_checkpoint(trained / "weights" / "best.ckpt", trained.parent / "synth", "val", tmp_path,
                                   device="cpu")
    assert json_safe(readme["metrics"]) == json_safe(expected)
    assert not math.isnan(expected["AP50"])


def test_mae_reconstruct_panels_for_paths_and_arrays(readme, mae_run, tmp_path):
    mae = readme["mae"]
    assert mae.checkpoint == mae_run / "weights" / "last.ckpt" and mae.img_size == TINY_MAE["img_size"]
    panels = readme["panels"]
    for panel in panels.values():
        assert panel.shape == (2, 3, 32, 32) and panel.dtype == torch.float32
        assert 0.0 <= float(panel.min()) and float(panel.max()) <= 1.0
    with Image.open(readme["images"][0]) as im:
        array = np.asarray(im)
    figure = tmp_path / "figure.png"
    from_array = mae.reconstruct([array, torch.from_numpy(read_image(readme["images"][1])).permute(2, 0, 1)],
                                 out=figure)
    for name in COLUMNS:
        torch.testing.assert_close(from_array[name], panels[name], atol=1e-5, rtol=0)
    assert figure.is_file()
    assert MAE.load(mae_run / "weights" / "last.ckpt", device="cpu").encoder_state_dict().keys() == \
        readme["encoder"].keys()


def one_line(excinfo: pytest.ExceptionInfo, kind: type[SarmaeError], text: str) -> None:
    assert isinstance(excinfo.value, kind) and text in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_bad_input_is_a_one_line_error(detector, trained, mae_run, chips, tmp_path):
    with pytest.raises(SarmaeError) as excinfo:
        Detector.load(tmp_path / "missing.ckpt")
    one_line(excinfo, CheckpointError, "no such checkpoint")
    with pytest.raises(SarmaeError) as excinfo:
        Detector.load(tmp_path)
    one_line(excinfo, CheckpointError, "a folder without weights/best.ckpt")
    with pytest.raises(SarmaeError) as excinfo:
        Detector.load(mae_run)
    one_line(excinfo, CheckpointError, "MAE pre-training checkpoint")
    with pytest.raises(SarmaeError) as excinfo:
        MAE.load(tmp_path)
    one_line(excinfo, CheckpointError, "a folder without weights/last.ckpt")
    with pytest.raises(SarmaeError) as excinfo:
        MAE.load(trained)  # a finetune run: its weights/last.ckpt is a detector
    one_line(excinfo, CheckpointError, "not a sarmae MAE pre-training checkpoint")
    for source, kind, text in [
        (42, DataError, "input of type int is not supported"),
        ({"image": "x.png"}, DataError, "input of type dict is not supported"),
        ([[str(chips[0])]], DataError, "input of type list is not supported"),
        ([], DataError, "an empty list of inputs"),
        (np.zeros((3, 64, 64), np.uint8), DataError, "looks channels-first"),
        (np.zeros((64, 64, 2), np.uint8), DataError, "2 bands are not supported"),
        (np.array([["a"]]), DataError, "holds no pixels"),
        (torch.full((3, 8, 8), 2.0), DataError, "float tensors are images scaled to [0, 1]"),
        (str(tmp_path / "nothing_*.png"), DataError, "the pattern matches no file"),
        (str(tmp_path / "missing.png"), DataError, "no such file or folder"),
    ]:
        with pytest.raises(SarmaeError) as excinfo:
            detector.predict(source)
        one_line(excinfo, kind, text)
    with pytest.raises(SarmaeError) as excinfo:
        detector.predict(chips[0], sliced="sometimes")
    one_line(excinfo, ConfigError, "use one of auto, always, never")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(SarmaeError) as excinfo:
        detector.predict(broken)
    one_line(excinfo, DataError, "broken.png")
    with pytest.raises(SarmaeError) as excinfo:
        readme_mae = MAE.load(mae_run, device="cpu")
        readme_mae.reconstruct(object())
    one_line(excinfo, DataError, "input of type object is not supported")


def test_evaluate_keeps_files_only_when_asked(detector, trained, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "kept"
    detector.evaluate(trained.parent / "synth", out=out, verbose=False)
    assert {p.name for p in out.iterdir()} == {"metrics.json", "results.json", "samples.png"}
    assert capsys.readouterr().out == "" and list(tmp_path.iterdir()) == [out]
    assert json.loads((out / "metrics.json").read_text())["checkpoint"] == str(detector.checkpoint)
