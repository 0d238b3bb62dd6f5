"""Image reading (8/16-bit, float, NaN/nodata, bands, bad files) and the unlabeled image pool."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
import torch

from sarmae.data import io
from sarmae.data.io import IntensityScaling, read_image, read_image_with_mask
from sarmae.data.robust import SkipBadSamples, collate_skip_bad
from sarmae.data.unlabeled import UnlabeledImages
from sarmae.errors import ConfigError, DataError

RNG = np.random.default_rng(0)


def _check_layout(image: np.ndarray, shape: tuple[int, int]) -> None:
    assert image.shape == (*shape, 3) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0


# --- 8-bit -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".png", ".bmp", ".jpg"])
def test_8bit_gray_is_divided_by_255_not_stretched(tmp_path, write_image, ext):
    gray = RNG.integers(100, 151, (20, 30), dtype=np.uint8)  # narrow range: a stretch would widen it
    gray[:10] = 100  # flat area so JPEG stays close to the input
    image = read_image(write_image(tmp_path / f"a{ext}", gray))
    _check_layout(image, (20, 30))
    assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])
    tol = 0.5 / 255 if ext != ".jpg" else 12 / 255
    assert np.abs(image[..., 0] - gray / 255.0).max() <= tol
    assert image.max() < 0.62 and image.min() > 0.35


def test_8bit_rgb_kept_and_rgba_alpha_dropped(tmp_path, write_image):
    rgb = RNG.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    assert np.allclose(read_image(write_image(tmp_path / "rgb.png", rgb)), rgb / 255.0, atol=1e-6)
    rgba = np.concatenate([rgb, np.full((8, 9, 1), 7, np.uint8)], axis=2)
    assert np.allclose(read_image(write_image(tmp_path / "rgba.png", rgba)), rgb / 255.0, atol=1e-6)


def test_8bit_nodata_masks_pixels_whose_bands_all_match(tmp_path, write_image):
    rgb = np.full((4, 5, 3), 90, np.uint8)
    rgb[0, 0] = 0  # all bands nodata -> invalid
    rgb[1, 1] = (0, 200, 0)  # only one band equals nodata -> still valid
    image, valid = read_image_with_mask(write_image(tmp_path / "n.png", rgb), IntensityScaling(nodata=0))
    assert not valid[0, 0] and valid[1, 1] and valid.sum() == 19
    assert np.allclose(image[1, 1], np.array([0, 200, 0]) / 255.0)


# --- 16-bit and float --------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_ramp_is_not_wrapped_and_follows_linear_formula(tmp_path, write_image, ext):
    ramp = (np.arange(200, dtype=np.uint16) * 300 + 50).reshape(10, 20)  # 50 .. 59750, far above 255
    image = read_image(write_image(tmp_path / f"r{ext}", ramp), IntensityScaling(mode="linear"))
    expected = (ramp.astype(np.float64) - 50) / (59750 - 50)
    assert np.allclose(image[..., 0], expected, atol=1e-6)
    assert np.all(np.diff(image[..., 0].ravel()) > 0)  # strictly monotonic: no 8-bit wrap-around


def test_16bit_default_percentile_formula(tmp_path, write_image):
    data = RNG.gamma(2.0, 3000.0, (32, 32)).astype(np.uint16)
    image = read_image(write_image(tmp_path / "p.tif", data))
    lo, hi = np.percentile(data.astype(np.float32), [2, 98])
    expected = np.clip((data - lo) / (hi - lo), 0, 1)
    assert np.allclose(image[..., 0], expected, atol=1e-5)
    assert (image == 0).mean() == pytest.approx(0.02, abs=0.01) and (image == 1).mean() == pytest.approx(0.02, abs=0.01)


def test_float_tiff_linear_fixed_range_and_db_modes(tmp_path, write_image):
    power = RNG.gamma(1.0, 0.05, (16, 24)).astype(np.float32) + 1e-4
    path = write_image(tmp_path / "f.tif", power)
    linear = read_image(path, IntensityScaling(mode="linear", vmin=0.0, vmax=0.1))
    assert np.allclose(linear[..., 0], np.clip(power / 0.1, 0, 1), atol=1e-6)
    db_fixed = read_image(path, IntensityScaling(mode="db", vmin=-25.0, vmax=-5.0))
    assert np.allclose(db_fixed[..., 0], np.clip((10 * np.log10(power) + 25) / 20, 0, 1), atol=1e-5)
    db = 10 * np.log10(power.astype(np.float64))
    lo, hi = np.percentile(db, [5, 95])
    db_pct = read_image(path, IntensityScaling(mode="db", low=5, high=95))
    assert np.allclose(db_pct[..., 0], np.clip((db - lo) / (hi - lo), 0, 1), atol=1e-4)


def test_complex_slc_db_uses_power(tmp_path, write_image):
    z = (RNG.normal(size=(8, 8)) + 1j * RNG.normal(size=(8, 8))).astype(np.complex64)
    image = read_image(write_image(tmp_path / "slc.tif", z), IntensityScaling(mode="db", vmin=-20, vmax=10))
    expected = np.clip((10 * np.log10(np.abs(z) ** 2) + 20) / 30, 0, 1)
    assert np.allclose(image[..., 0], expected, atol=1e-5)


def test_nan_inf_nodata_excluded_from_statistics_and_zeroed(tmp_path, write_image):
    data = np.linspace(1.0, 2.0, 48, dtype=np.float32).reshape(6, 8)
    data[0, 0], data[0, 1], data[0, 2] = np.nan, np.inf, -9999.0
    path = write_image(tmp_path / "n.tif", data)
    image, valid = read_image_with_mask(path, IntensityScaling(mode="linear", nodata=-9999.0))
    assert valid.sum() == 45 and not valid[0, :3].any()
    assert np.all(image[0, :3] == 0)
    # min..max of the valid pixels only: the smallest valid value maps to 0, the largest to 1
    assert image[0, 3, 0] == pytest.approx(0.0) and image[-1, -1, 0] == pytest.approx(1.0)
    assert np.isfinite(image).all()


def test_geotiff_gdal_nodata_tag_is_used(tmp_path, write_image):
    data = np.full((5, 5), 1000, np.uint16)
    data[2, 2], data[0, 0] = 3000, 0
    path = write_image(tmp_path / "g.tif", data, extratags=[(42113, "s", 0, "0", True)])
    image, valid = read_image_with_mask(path, IntensityScaling(mode="linear"))
    assert not valid[0, 0] and valid.sum() == 24
    assert image[2, 2, 0] == pytest.approx(1.0) and image[1, 1, 0] == pytest.approx(0.0)


def test_all_invalid_image_is_a_data_error(tmp_path, write_image):
    path = write_image(tmp_path / "allnan.tif", np.full((4, 4), np.nan, np.float32))
    with pytest.raises(DataError, match="allnan.tif"):
        read_image(path)
    zeros = write_image(tmp_path / "zeros.tif", np.zeros((4, 4), np.float32))
    with pytest.raises(DataError, match="zeros.tif"):
        read_image(zeros, IntensityScaling(mode="db"))


def test_tiff_band_layouts_agree_and_band_counts(tmp_path, write_image):
    chw = RNG.integers(0, 60000, (3, 6, 7), dtype=np.uint16)
    planar = read_image(write_image(tmp_path / "chw.tif", chw, planarconfig="separate"))
    contig = read_image(write_image(tmp_path / "hwc.tif", np.moveaxis(chw, 0, -1)))
    _check_layout(planar, (6, 7))
    assert np.array_equal(planar, contig)
    four = np.concatenate([chw, np.full((1, 6, 7), 65535, np.uint16)])
    rgba = read_image(write_image(tmp_path / "rgba.tif", np.moveaxis(four, 0, -1)), IntensityScaling("linear"))
    lin = read_image(tmp_path / "hwc.tif", IntensityScaling("linear"))
    assert np.allclose(rgba, lin)  # alpha dropped and not part of the statistics
    with pytest.raises(DataError, match=r"vvvh.tif.*2 bands"):
        read_image(write_image(tmp_path / "vvvh.tif", chw[:2], planarconfig="separate"))
    with pytest.raises(DataError, match=r"five.tif.*5 bands"):
        read_image(write_image(tmp_path / "five.tif", np.zeros((5, 6, 7), np.uint16), planarconfig="separate"))


def test_16bit_rgb_png_keeps_16_bits(tmp_path, write_image):
    pytest.importorskip("rasterio")
    rgb = (np.arange(4 * 5 * 3, dtype=np.uint16).reshape(4, 5, 3) * 1000 + 7).astype(np.uint16)
    image = read_image(write_image(tmp_path / "rgb16.png", rgb), IntensityScaling(mode="linear"))
    assert np.allclose(image, (rgb - 7.0) / (59007 - 7.0), atol=1e-6)


def test_statistics_subsampling_matches_full_percentiles(tmp_path, write_image, monkeypatch):
    data = RNG.gamma(2.0, 1000.0, (64, 64)).astype(np.float32)
    path = write_image(tmp_path / "big.tif", data)
    full = read_image(path)
    monkeypatch.setattr(io, "STATS_MAX_SAMPLES", 512)
    sub = read_image(path)
    assert np.abs(full - sub).max() < 0.05


# --- configuration -----------------------------------------------------------------------------------


def test_scaling_from_config():
    assert IntensityScaling.from_config(None) == IntensityScaling()
    assert IntensityScaling.from_config("db").mode == "db"
    cfg = IntensityScaling.from_config({"mode": "linear", "vmin": 0, "vmax": "5", "nodata": -1})
    assert (cfg.mode, cfg.vmin, cfg.vmax, cfg.nodata) == ("linear", 0.0, 5.0, -1.0)
    with pytest.raises(ConfigError, match="'gamma'"):
        IntensityScaling.from_config({"mode": "gamma"})
    with pytest.raises(ConfigError, match="clip"):
        IntensityScaling.from_config({"mode": "db", "clip": 3})
    with pytest.raises(ConfigError, match="low"):
        IntensityScaling.from_config({"low": 90, "high": 10})
    with pytest.raises(ConfigError, match="vmin"):
        IntensityScaling(mode="linear", vmin=3, vmax=1)


# --- bad files ---------------------------------------------------------------------------------------


def _png_bytes(tmp_path, write_image) -> bytes:
    return write_image(tmp_path / "ok.png", RNG.integers(0, 256, (64, 64), dtype=np.uint8)).read_bytes()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("notes.txt", b"hello", "unsupported"),
        ("missing.png", None, "no such"),
        ("empty.jpg", b"", "empty"),
        ("garbage.png", b"\x00not an image at all" * 10, "cannot decode"),
        ("truncated.png", "half-png", "cannot decode"),
        ("garbage.tif", b"II*\x00garbage" * 5, "cannot decode"),
    ],
)
def test_bad_files_raise_data_error_naming_the_file(tmp_path, write_image, name, content, message):
    path = tmp_path / name
    if content == "half-png":
        full = _png_bytes(tmp_path, write_image)
        path.write_bytes(full[: len(full) // 2])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=rf"{name}.*{message}"):
        read_image(path)


# --- unlabeled pool and MAE collate ------------------------------------------------------------------


def test_unlabeled_folder_recursion_ignores_non_images(tmp_path, write_image):
    img = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    for rel in ["b.png", "sub/a.jpg", "sub/deeper/c.TIF", "sub/z.bmp"]:
        write_image(tmp_path / "pool" / rel, img)
    (tmp_path / "pool" / "readme.txt").write_text("not an image")
    (tmp_path / "pool" / "sub" / "labels.json.bak").write_text("{}")
    (tmp_path / "pool" / "._b.png").write_bytes(b"macOS resource fork")
    ds = UnlabeledImages([tmp_path / "pool"])
    rel = [p.relative_to(tmp_path / "pool").as_posix() for p in map(ds.image_path, range(len(ds)))]
    assert rel == ["b.png", "sub/a.jpg", "sub/deeper/c.TIF", "sub/z.bmp"]
    item = ds[0]
    assert isinstance(item, torch.Tensor) and item.shape == (3, 8, 8) and item.dtype == torch.float32


def test_unlabeled_mixes_coco_json_and_files_and_applies_transform(tiny_coco, tmp_path, write_image):
    single = write_image(tmp_path / "one.png", np.zeros((5, 6), np.uint8) + 40)
    ds = UnlabeledImages([tiny_coco.ann_file, single], transform=lambda x: x * 2)
    assert len(ds) == 4 and ds.image_path(0).name == "0000007.jpg"
    assert ds[3].shape == (3, 5, 6) and torch.allclose(ds[3], torch.full((3, 5, 6), 80 / 255))


def test_unlabeled_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="no images found"):
        UnlabeledImages([tmp_path / "empty"])
    with pytest.raises(DataError, match="nowhere"):
        UnlabeledImages([tmp_path / "nowhere"])
    (tmp_path / "bad.json").write_text(json.dumps({"no": "images"}))
    with pytest.raises(DataError, match="bad.json"):
        UnlabeledImages([tmp_path / "bad.json"])


def test_skip_bad_samples_and_collate_for_mae(tmp_path, write_image, caplog):
    for i in range(3):
        write_image(tmp_path / "pool" / f"{i}.png", RNG.integers(0, 256, (8, 8), dtype=np.uint8))
    (tmp_path / "pool" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\ncorrupt")
    ds = SkipBadSamples(UnlabeledImages([tmp_path / "pool"]))
    with caplog.at_level("WARNING"):
        batch = [ds[i] for i in range(len(ds))]
    assert batch[1] is None and "1.png" in caplog.text
    images, skipped = collate_skip_bad(batch)
    assert images.shape == (2, 3, 8, 8) and skipped == 1
    assert collate_skip_bad([None, None])[1] == 2
    with pytest.raises(DataError, match="1.png"):
        SkipBadSamples(ds.dataset, strict=True)[1]


def test_lzw_geotiff_falls_back_to_rasterio_or_says_what_to_install(tmp_path, monkeypatch):
    rasterio = pytest.importorskip("rasterio")
    data = RNG.integers(101, 5000, (1, 12, 10)).astype(np.uint16)
    data[0, 3, 4] = 100
    path = tmp_path / "lzw.tif"
    profile = dict(driver="GTiff", width=10, height=12, count=1, dtype="uint16", compress="lzw", nodata=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NotGeoreferencedWarning: a plain image is enough here
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    image, valid = read_image_with_mask(path, IntensityScaling(mode="linear"))
    masked = np.where(data[0] == 100, np.nan, data[0].astype(np.float64))
    expected = (masked - np.nanmin(masked)) / (np.nanmax(masked) - np.nanmin(masked))
    assert np.array_equal(valid, data[0] != 100)
    assert np.allclose(image[..., 0], np.nan_to_num(expected), atol=1e-6)
    monkeypatch.setitem(sys.modules, "rasterio", None)  # as if rasterio were not installed
    with pytest.raises(DataError, match=r"lzw.tif.*pip install"):
        read_image(path)
