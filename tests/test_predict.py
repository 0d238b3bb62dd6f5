"""``sarmae predict``: folders, globs and files in, predictions.json with file names and category ids out,
one rendered image per input; unreadable images are skipped, missing paths stop the run with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from sarmae.cli import main
from sarmae.infer.predict import expand_inputs, output_names
from test_finetune import CAT_IDS, trained_run

NAMES = ["ship", "aircraft", "car", "tank", "bridge", "harbor"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory)


def test_predict_folder_glob_and_files_skipping_a_corrupt_image(trained, tmp_path, capsys):
    val = sorted((trained.parent / "synth" / "JPEGImages" / "val").glob("*.png"))
    folder = tmp_path / "folder"
    folder.mkdir()
    for path in val[:2]:
        shutil.copy(path, folder / path.name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image: ignored in folders")
    with Image.open(val[2]) as im:  # another size: boxes must come back in this file's pixels
        im.crop((0, 0, 200, 150)).save(tmp_path / "crop.png")
    stem3, stem4 = val[3].stem, val[4].stem  # 1000004, 1000005
    assert stem3[:-1] == stem4[:-1]
    pattern = str(val[3].parent / f"{stem3[:-1]}[{stem3[-1]}{stem4[-1]}].png")  # matches val[3] and val[4] only
    assert sorted(expand_inputs([pattern])) == [val[3], val[4]]
    out = tmp_path / "out"
    code = main(["predict", str(trained / "weights" / "best.ckpt"), str(folder), pattern,
                 str(tmp_path / "crop.png"), str(val[5]), "--out", str(out), "--score-threshold", "0.002",
                 "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0 and "broken.png" in captured.out + captured.err and "skipped 1 unreadable" in captured.out
    good = [folder / val[0].name, folder / val[1].name, val[3], val[4], tmp_path / "crop.png", val[5]]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in good)
    predictions = json.loads((out / "predictions.json").read_text())
    assert predictions and {p["file_name"] for p in predictions} <= {str(p) for p in good}
    for p in predictions:
        assert p["category_id"] in CAT_IDS and p["category_name"] == NAMES[CAT_IDS.index(p["category_id"])]
        assert p["score"] >= 0.002
        width, height = (200, 150) if p["file_name"].endswith("crop.png") else (256, 256)
        x, y, w, h = p["bbox"]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= width + 0.01 and y + h <= height + 0.01
    with Image.open(out / "crop.png") as render:
        assert render.size == (200, 150) and render.mode == "RGB"


@pytest.mark.parametrize("inputs, message", [
    (["missing/folder"], "missing/folder: no such file or folder"),
    (["nothing_here_*.png"], "the pattern matches no file"),
])
def test_missing_input_exits_2_with_one_line(inputs, message, trained, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(trained / "weights" / "last.ckpt"), *inputs, "--out", "out"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_output_names_do_not_collide():
    assert output_names([Path("a/x.png"), Path("b/x.png"), Path("x.tif"), Path("y.jpg")]) == \
        ["x.png", "x_2.png", "x_3.png", "y.png"]


def test_large_georeferenced_scene_goes_through_sliced_inference(trained, tmp_path, capsys):
    """A 3x3 mosaic of 256-px chips as a 16-bit GeoTIFF with nodata: tiled at the model's 256 px, merged, and
    written as COCO/CSV/GeoJSON/preview; a regular chip in the same call still goes the whole-image way."""
    import numpy as np
    import rasterio
    from affine import Affine

    from sarmae.data.synth import generate_image

    rng = np.random.default_rng(5)
    mosaic = np.zeros((768, 768), np.uint16)
    for r in range(3):
        for c in range(3):
            chip, _ = generate_image(rng, 256)
            mosaic[r * 256 : (r + 1) * 256, c * 256 : (c + 1) * 256] = chip.astype(np.uint16) * 200 + 1
    mosaic[:, :100] = 0  # nodata strip
    scene = tmp_path / "scene.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=768, height=768, count=1, dtype="uint16", nodata=0,
                       crs="EPSG:4326", transform=Affine(1e-4, 0, 10.0, 0, -1e-4, 50.0)) as dst:
        dst.write(mosaic[None])
    chip = sorted((trained.parent / "synth" / "JPEGImages" / "val").glob("*.png"))[0]
    out = tmp_path / "out"
    code = main(["predict", str(trained / "weights" / "last.ckpt"), str(scene), str(chip), "--out", str(out),
                 "--score-threshold", "0.002", "--device", "cpu", "--scaling", "{mode: percentile, nodata: 0}"])
    assert code == 0, capsys.readouterr().err
    assert "1 by sliced inference" in capsys.readouterr().out
    summary = json.loads((out / "scene.summary.json").read_text())
    assert summary["tile_size"] == 256 and summary["tiles"] == 16 and summary["georef"] == "affine"
    assert summary["scaling"] is not None
    predictions = json.loads((out / "predictions.json").read_text())
    on_scene = [p for p in predictions if p["file_name"] == str(scene)]
    assert len(on_scene) == summary["detections"] > 0 and {p["image_id"] for p in on_scene} == {1}
    assert {p["image_id"] for p in predictions if p["file_name"] == str(chip)} <= {2}
    for p in on_scene:
        x, y, w, h = p["bbox"]
        assert x + w / 2 >= 99 and x + w <= 768.01 and y + h <= 768.01  # scene pixels, none on the nodata strip
    features = json.loads((out / "scene.detections.geojson").read_text())["features"]
    assert len(features) == len(on_scene)
    for feature in features:
        for lon, lat in feature["geometry"]["coordinates"][0]:
            assert 10.0 - 1e-9 <= lon <= 10.0768 + 1e-9 and 49.9232 - 1e-9 <= lat <= 50.0 + 1e-9
    assert (out / "scene.preview.png").is_file() and (out / f"{chip.stem}.png").is_file()
    assert not (out / "scene.png").exists()  # the scene is not also rendered whole


def test_unreadable_inputs_only_and_bad_options_exit_2(trained, tmp_path, capsys):
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    ckpt = str(trained / "weights" / "last.ckpt")
    assert main(["predict", ckpt, str(empty), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: none of the 1 input(s) could be read")
    for extra, message in ((["--overlap", "0.95"], "overlap 0.95"), (["--scaling", "decibel"], "'decibel'"),
                           (["--scaling", "[1, 2]"], "--scaling")):
        assert main(["predict", ckpt, str(empty), "--out", str(tmp_path / "o"), *extra]) == 2
        assert message in capsys.readouterr().err
