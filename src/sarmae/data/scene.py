"""Windowed reading of big SAR rasters with one intensity scaling for the whole scene.

A 20000 x 20000 float32 scene is 1.6 GB per band, so (Geo)TIFF / VRT scenes are never read at once: GDAL
(rasterio) reads one tile :class:`~rasterio.windows.Window` at a time, and a decimated ``out_shape`` read
(which uses the file's overviews when it has some) gives the scene statistics and the preview.

Contrast must not change from tile to tile, otherwise the same ship looks different on either side of a
seam. So percentiles / min / max are estimated ONCE from the decimated read (nearest sampling: real pixel
values, no averaging that would narrow the distribution) and frozen into a fixed-bounds
:class:`~sarmae.data.io.IntensityScaling` (``linear`` or ``db`` with ``vmin``/``vmax``) applied to every
window. 8-bit data is divided by 255 as in :mod:`sarmae.data.io`. Band rules (1 -> 3, RGBA -> RGB, 2 or
more than 4 bands refused) and nodata / NaN masking are the same as for chips.

PNG / JPEG / BMP scenes have no random access; they are small enough for Pillow and are decoded once, then
served window by window from memory (as are TIFFs when rasterio is not installed).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sarmae.data import io
from sarmae.data.io import IMAGE_EXTENSIONS, IntensityScaling
from sarmae.errors import DataError

RASTERIO_EXTENSIONS = (".tif", ".tiff", ".vrt")
SCENE_EXTENSIONS = tuple(dict.fromkeys(IMAGE_EXTENSIONS + RASTERIO_EXTENSIONS))
# Longest side of the decimated read the global statistics come from (about 1 M pixels: percentiles are
# stable to far below one grey level, and the read stays fast even without overviews).
STATS_SIDE = 1024


@dataclass(frozen=True)
class Georef:
    """How scene pixels map to the world. ``transform`` (an ``affine.Affine``) or ``gcps`` (rasterio
    ``GroundControlPoint`` list) in ``crs``; pixel coordinates are continuous, (0, 0) = top-left corner."""

    crs: Any = None
    transform: Any = None
    gcps: tuple = ()

    @property
    def ok(self) -> bool:
        return self.crs is not None and (self.transform is not None or len(self.gcps) >= 3)

    @property
    def kind(self) -> str:
        return "none" if not self.ok else ("affine" if self.transform is not None else "gcps")


class _RasterioSource:
    """Raw bands of a GDAL raster, read by window or decimated; ``bands`` are the 1-based band indexes used."""

    def __init__(self, path: Path) -> None:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.src = rasterio.open(path)
        except Exception as exc:  # noqa: BLE001 - GDAL reports corrupt files in many ways
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            raise DataError(f"{path}: cannot open raster ({reason}); re-export or remove it") from None
        src = self.src
        self.width, self.height = src.width, src.height
        self.bands = _band_indexes(src.count, path)
        self.dtype = np.dtype(src.dtypes[0])
        self.nodata = src.nodata
        gcps, gcp_crs = src.gcps
        if src.crs is not None and not src.transform.is_identity:
            self.georef = Georef(crs=src.crs, transform=src.transform)
        elif gcps and gcp_crs is not None:
            self.georef = Georef(crs=gcp_crs, gcps=tuple(gcps))
        else:
            self.georef = Georef()

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w, C) raw values of the window at column ``x``, row ``y``."""
        from rasterio.windows import Window

        try:
            data = self.src.read(self.bands, window=Window(x, y, w, h))
        except Exception as exc:  # noqa: BLE001 - a damaged block deep inside a big file
            raise DataError(f"{self.src.name}: cannot read the window x={x} y={y} w={w} h={h} "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                            "the file is damaged, re-export it") from None
        return np.moveaxis(data, 0, -1)

    def decimated(self, out_h: int, out_w: int, average: bool) -> np.ndarray:
        """(out_h, out_w, C) whole scene resampled by GDAL (nodata-aware averaging, or nearest)."""
        from rasterio.enums import Resampling

        resampling = Resampling.average if average else Resampling.nearest
        data = self.src.read(self.bands, out_shape=(len(self.bands), out_h, out_w), resampling=resampling)
        return np.moveaxis(data, 0, -1)

    def close(self) -> None:
        self.src.close()


class _ArraySource:
    """The same interface over pixels held in memory: an image decoded at once (PNG / JPEG / BMP, or TIFF without
    rasterio) or an array given by the caller (:func:`open_array_scene`)."""

    def __init__(self, data: np.ndarray, nodata: float | None = None) -> None:
        self.data, self.nodata = data, nodata  # (H, W, 1 or 3)
        self.height, self.width = self.data.shape[:2]
        self.dtype = self.data.dtype
        self.georef = Georef()

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self.data[y : y + h, x : x + w]

    def decimated(self, out_h: int, out_w: int, average: bool) -> np.ndarray:
        rows = ((np.arange(out_h) + 0.5) * self.height / out_h).astype(np.int64)
        cols = ((np.arange(out_w) + 0.5) * self.width / out_w).astype(np.int64)
        return self.data[rows][:, cols]

    def close(self) -> None:
        self.data = self.data[:0, :0]


def _band_indexes(count: int, path: Path) -> list[int]:
    """1-based bands to read: 1 -> [1], 3 or 4 (RGBA) -> [1, 2, 3]; anything else is refused like chips."""
    if count == 1:
        return [1]
    if count in (3, 4):
        return [1, 2, 3]
    hint = " (e.g. VV/VH): export one band, or compose 3 bands" if count == 2 else ": export 1 or 3 bands"
    raise DataError(f"{path}: {count} bands are not supported{hint}")


@dataclass
class Scene:
    """An open scene: ``read`` windows as float32 [0, 1] RGB with a valid mask, ``overview`` for a preview.

    ``scaling`` is the resolved fixed-bounds rule every window uses (None for 8-bit data: / 255).
    Use as a context manager, or call :meth:`close`.
    """

    path: Path
    source: Any
    scaling: IntensityScaling | None
    nodata: float | None
    stats: dict = field(default_factory=dict)

    @property
    def width(self) -> int:
        return self.source.width

    @property
    def height(self) -> int:
        return self.source.height

    @property
    def georef(self) -> Georef:
        return self.source.georef

    @property
    def dtype(self) -> np.dtype:
        return self.source.dtype

    def read(self, x: int, y: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        """Window at column ``x``, row ``y`` (inside the scene) -> (image float32 (h, w, 3) in [0, 1], valid (h, w))."""
        if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > self.width or y + h > self.height:
            raise ValueError(f"window x={x} y={y} w={w} h={h} is outside the {self.width}x{self.height} scene")
        return self._to_float(self.source.read(x, y, w, h))

    def overview(self, max_side: int) -> tuple[np.ndarray, np.ndarray, float]:
        """The whole scene shrunk so its longest side is at most ``max_side`` (never enlarged).

        Returns ``(image float32 (h, w, 3), valid (h, w), scale)`` with ``scale`` = overview px per scene px.
        """
        scale = min(1.0, max_side / max(self.width, self.height))
        out_h, out_w = max(1, round(self.height * scale)), max(1, round(self.width * scale))
        if (out_h, out_w) == (self.height, self.width):
            return (*self.read(0, 0, self.width, self.height), 1.0)
        # Averaging stands in for the anti-aliased resize chips get; for dB it averages power, as it should.
        return (*self._to_float(self.source.decimated(out_h, out_w, average=True)), scale)

    def _to_float(self, bands: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # 8-bit data (scaling None) is divided by 255 as for chips; deeper data uses the frozen scene bounds.
        return io.bands_to_image(bands, self.scaling, self.nodata)

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> Scene:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_scene_path(path: str | Path) -> Path:
    """The usual one-line DataErrors for a missing, empty or unsupported file."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in SCENE_EXTENSIONS:
        raise DataError(f"{path}: unsupported scene type '{ext}'; use one of {', '.join(SCENE_EXTENSIONS)}")
    if not path.is_file():
        raise DataError(f"{path}: no such scene file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes); re-export or remove it")
    return path


def _rasterio_available() -> bool:
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


def open_scene(path: str | Path, scaling: IntensityScaling | dict | str | None = None,
               stats_side: int = STATS_SIDE) -> Scene:
    """Open a scene for windowed reading and freeze its intensity scaling from a decimated read.

    Raises ``DataError`` for unsupported / missing / empty / corrupt files and for scenes without a valid
    pixel in the ``stats_side`` overview (all nodata, NaN or, in dB mode, <= 0).
    """
    path = check_scene_path(path)
    scaling = IntensityScaling.from_config(scaling)
    ext = path.suffix.lower()
    if ext in RASTERIO_EXTENSIONS and _rasterio_available():
        source: Any = _RasterioSource(path)
    elif ext == ".vrt":
        raise DataError(f"{path}: VRT scenes need rasterio; run `pip install rasterio`")
    else:
        if ext in io.TIFF_EXTENSIONS:
            warnings.warn(f"{path}: rasterio is not installed, the whole scene is read into memory "
                          "(`pip install rasterio` for windowed reads)", stacklevel=2)
        source = _ArraySource(*io.read_bands(path))
    return _scene(path, source, scaling, stats_side)


def open_array_scene(bands: np.ndarray, name: str, scaling: IntensityScaling | dict | str | None = None,
                     stats_side: int = STATS_SIDE) -> Scene:
    """:func:`open_scene` for raw pixels held in memory, (H, W, 1 or 3), e.g. an array a caller passes in."""
    return _scene(Path(name), _ArraySource(bands), IntensityScaling.from_config(scaling), stats_side)


def _scene(path: Path, source: Any, scaling: IntensityScaling, stats_side: int) -> Scene:
    """Freeze one intensity rule for the whole scene from a decimated read of at most ``stats_side`` px."""
    try:
        if source.width == 0 or source.height == 0:
            raise DataError(f"{path}: the raster has no pixels ({source.width}x{source.height})")
        nodata = scaling.nodata if scaling.nodata is not None else source.nodata
        step = max(source.width, source.height) / stats_side
        out_h, out_w = (source.height, source.width) if step <= 1 else (
            max(1, round(source.height / step)), max(1, round(source.width / step)))
        sample = source.decimated(out_h, out_w, average=False)
        fixed, stats = freeze_scaling(sample, scaling, nodata)
        if stats["valid_fraction"] == 0.0:
            raise DataError(f"{path}: no valid pixel in a {out_w}x{out_h} overview (all nodata, NaN/inf or, in db "
                            "mode, <= 0); check the file and the nodata value")
    except BaseException:
        source.close()
        raise
    return Scene(path=path, source=source, scaling=fixed, nodata=nodata, stats=stats)


def freeze_scaling(sample: np.ndarray, scaling: IntensityScaling, nodata: float | None
                   ) -> tuple[IntensityScaling | None, dict]:
    """Scene-wide bounds from a decimated ``sample`` (h, w, C) of raw values, following ``scaling``.

    Returns ``(fixed rule or None for 8-bit data, {"valid_fraction", "vmin", "vmax", "mode"})``. The rule
    is ``linear`` (or ``db``) with explicit ``vmin``/``vmax``, so every window maps values identically; the
    bounds follow :func:`sarmae.data.io.read_image` (percentiles of valid values, fallbacks min..max).
    """
    if sample.dtype in (np.uint8, np.bool_):
        valid = io.nodata_mask(sample, nodata)
        fraction = 1.0 if valid is None else float(valid.mean())
        return None, {"valid_fraction": fraction, "mode": "8-bit / 255", "vmin": 0.0, "vmax": 255.0}
    db = scaling.mode == "db"
    values, valid = io.intensity_values(sample, scaling, nodata)
    samples = values[valid].ravel()
    if samples.size == 0:
        return None, {"valid_fraction": 0.0, "mode": scaling.mode, "vmin": None, "vmax": None}
    lo, hi = io.intensity_bounds(samples, scaling)
    if not hi > lo:  # constant scene: everything maps to 0, as io does
        hi = lo + (abs(lo) or 1.0) * 1e-3
    if math.isinf(lo) or math.isinf(hi):
        raise DataError(f"intensity bounds vmin={lo}, vmax={hi} are not finite; set data.scaling.vmin/vmax")
    fixed = IntensityScaling(mode="db" if db else "linear", vmin=float(lo), vmax=float(hi), nodata=nodata)
    stats = {"valid_fraction": float(valid.mean()), "mode": scaling.mode, "vmin": float(lo), "vmax": float(hi)}
    return fixed, stats


def scene_size(path: str | Path) -> tuple[int, int, bool]:
    """``(width, height, georeferenced)`` from the header only; raises ``DataError`` if unreadable."""
    path = check_scene_path(path)
    if path.suffix.lower() in RASTERIO_EXTENSIONS and _rasterio_available():
        source = _RasterioSource(path)
        try:
            return source.width, source.height, source.georef.ok
        finally:
            source.close()
    if path.suffix.lower() in io.TIFF_EXTENSIONS:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return int(page.imagewidth), int(page.imagelength), 33922 in page.tags or 34264 in page.tags
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{path}: cannot read the TIFF header ({type(exc).__name__}); re-export it") from None
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.width, img.height, False
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: cannot read the image header ({type(exc).__name__}); re-export it") from None


__all__ = ["Georef", "SCENE_EXTENSIONS", "Scene", "check_scene_path", "freeze_scaling", "open_scene", "scene_size"]
