"""``sarmae predict``: folders, globs and files in, predictions.json with file names and category ids out,
one rendered image per input; unreadable images are skipped, missing paths stop the run with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from sarmae.cli import main
from sarmae.engine.predict import expand_inputs, output_names
from test_finetune import CAT_IDS, trained_run

NAMES = ["ship", "aircraft", "car", "tank", "bridge", "harbor"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory)


@pytest.mark.training
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
