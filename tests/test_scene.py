"""Windowed scene reading: scene-wide scaling, nodata, dB, memory bound, 8-bit formats and bad files."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from sarmae.data import scene as scene_mod
from sarmae.data.io import IntensityScaling, read_image
from sarmae.data.scene import open_scene, scene_size
from sarmae.errors import DataError


def write_tif(path, array, nodata=None, **profile):
    """(H, W) or (C, H, W) array -> tiled GeoTIFF written with rasterio."""
    data = array[None] if array.ndim == 2 else array
    base = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
            "dtype": data.dtype.name, "tiled": True, "blockxsize": 64, "blockysize": 64}
    if nodata is not None:
        base["nodata"] = nodata
    with rasterio.open(path, "w", **{**base, **profile}) as dst:
        dst.write(data)
    return path


pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def test_scaling_is_scene_wide_so_tiles_share_contrast(tmp_path):
    rng = np.random.default_rng(0)
    pixels = np.empty((400, 600), np.float32)
    pixels[:, :300] = rng.normal(10, 1, (400, 300))  # dark half
    pixels[:, 300:] = rng.normal(100, 10, (400, 300))  # bright half
    path = write_tif(tmp_path / "halves.tif", pixels)
    with open_scene(path) as scene:
        full, valid = scene.read(0, 0, 600, 400)
        left, _ = scene.read(0, 0, 256, 256)
        right, _ = scene.read(344, 144, 256, 256)
        stats = scene.stats
    assert valid.all() and full.shape == (400, 600, 3)
    assert np.array_equal(left, full[:256, :256]) and np.array_equal(right, full[144:, 344:])
    assert left.mean() < 0.1 < 0.5 < right.mean()  # the dark half stays dark
    alone = read_image(write_tif(tmp_path / "left.tif", pixels[:256, :256]))
    assert alone.mean() > 0.3  # a per-tile stretch would have brightened it: what global bounds avoid
    p2, p98 = np.percentile(pixels, [2, 98])
    assert stats["vmin"] == pytest.approx(p2, abs=0.5) and stats["vmax"] == pytest.approx(p98, abs=2.0)


def test_16bit_nodata_and_float_nan_are_masked(tmp_path):
    rng = np.random.default_rng(1)
    u16 = rng.integers(100, 5000, (120, 90)).astype(np.uint16)
    u16[:40] = 0
    with open_scene(write_tif(tmp_path / "u16.tif", u16, nodata=0)) as scene:
        image, valid = scene.read(0, 20, 90, 60)
        assert scene.nodata == 0 and scene.stats["valid_fraction"] == pytest.approx(80 / 120, abs=0.02)
    assert not valid[:20].any() and valid[20:].all() and (image[:20] == 0).all()
    f32 = rng.gamma(1.0, 0.05, (100, 100)).astype(np.float32)
    f32[10, :] = np.nan
    f32[:, 50:] = -9999.0
    with open_scene(write_tif(tmp_path / "f32.tif", f32, nodata=-9999.0)) as scene:
        image, valid = scene.read(0, 0, 100, 100)
    want = np.isfinite(f32) & (f32 != -9999.0)
    assert np.array_equal(valid, want) and (image[~want] == 0).all() and 0 <= image.min() <= image.max() <= 1


def test_db_mode_with_fixed_bounds(tmp_path):
    power = np.full((64, 64), 0.1, np.float32)  # -10 dB
    power[0, 0] = 1.0  # 0 dB
    scaling = IntensityScaling(mode="db", vmin=-20.0, vmax=0.0)
    with open_scene(write_tif(tmp_path / "p.tif", power), scaling) as scene:
        image, _ = scene.read(0, 0, 2, 2)
    assert image[1, 1, 0] == pytest.approx(0.5, abs=1e-6) and image[0, 0, 0] == pytest.approx(1.0)


def test_a_20000_px_float_scene_is_read_window_by_window(tmp_path):
    """1.6 GB of float32 pixels; opening, the statistics, an overview and tiles stay far below that."""
    path = tmp_path / "big.tif"
    profile = {"driver": "GTiff", "width": 20000, "height": 20000, "count": 1, "dtype": "float32", "tiled": True,
               "blockxsize": 512, "blockysize": 512, "nodata": -9999.0, "SPARSE_OK": True,
               "crs": "EPSG:32633", "transform": Affine(10.0, 0.0, 400000.0, 0.0, -10.0, 5000000.0)}
    block = np.random.default_rng(2).gamma(1.0, 1.0, (1, 1024, 1024)).astype(np.float32)
    with rasterio.open(path, "w", **profile) as dst:  # unwritten blocks read back as nodata
        dst.write(block, window=Window(9000, 9000, 1024, 1024))
    assert scene_size(path) == (20000, 20000, True)
    tracemalloc.start()
    try:
        with open_scene(path) as scene:
            tile, valid = scene.read(8800, 8800, 800, 800)
            overview, ov_valid, scale = scene.overview(1024)
            empty, empty_valid = scene.read(0, 0, 800, 800)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100e6
    assert valid[200:, 200:].all() and not valid[:200].any() and tile[valid].std() > 0.1
    assert overview.shape == (1024, 1024, 3) and scale == pytest.approx(1024 / 20000) and ov_valid.any()
    assert not empty_valid.any()


def test_8bit_png_and_jpeg_scenes(tmp_path, write_image):
    gray = np.random.default_rng(3).integers(0, 256, (300, 350), dtype=np.uint8)
    with open_scene(write_image(tmp_path / "s.png", gray)) as scene:
        image, valid = scene.read(100, 50, 200, 128)
        assert scene.scaling is None and not scene.georef.ok
    assert valid.all() and np.allclose(image[..., 2], gray[50:178, 100:300] / 255.0, atol=1e-6)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    with open_scene(write_image(tmp_path / "s.jpg", rgb)) as scene:
        assert (scene.width, scene.height) == (350, 300)
        assert scene.read(0, 0, 350, 300)[0].shape == (300, 350, 3)


def test_tiff_without_rasterio_falls_back_to_a_full_read(tmp_path, monkeypatch):
    u16 = np.random.default_rng(4).integers(0, 3000, (70, 80)).astype(np.uint16)
    path = write_tif(tmp_path / "u.tif", u16, compress="deflate")
    with open_scene(path) as scene:
        want = scene.read(10, 5, 40, 30)[0]
    monkeypatch.setattr(scene_mod, "_rasterio_available", lambda: False)
    with pytest.warns(UserWarning, match="rasterio is not installed"), open_scene(path) as scene:
        got = scene.read(10, 5, 40, 30)[0]
    assert np.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("case", ["unsupported", "missing", "empty", "corrupt", "all-nodata", "two-bands"])
def test_bad_scenes_give_one_line_data_errors(tmp_path, case):
    if case == "unsupported":
        path = tmp_path / "scene.gif"
        path.write_bytes(b"GIF89a")
        match = "unsupported scene type"
    elif case == "missing":
        path, match = tmp_path / "nope.tif", "no such scene file"
    elif case == "empty":
        path = tmp_path / "empty.tif"
        path.touch()
        match = "empty file"
    elif case == "corrupt":
        path = tmp_path / "corrupt.tif"
        path.write_bytes(b"II*\x00" + b"\x13" * 200)
        match = "cannot open raster"
    elif case == "all-nodata":
        path, match = write_tif(tmp_path / "nodata.tif", np.zeros((50, 60), np.uint16), nodata=0), "no valid pixel"
    else:
        path, match = write_tif(tmp_path / "vvvh.tif", np.ones((2, 20, 20), np.float32)), "2 bands"
    with pytest.raises(DataError, match=match) as info:
        open_scene(path)
    message = str(info.value)
    assert "\n" not in message and path.name in message
