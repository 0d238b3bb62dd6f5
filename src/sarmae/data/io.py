"""Reading SAR images of any bit depth into float32 ``(H, W, 3)`` arrays in [0, 1].

SAR archives mix 8-bit JPEG/PNG/BMP chips (SARDet-100K) with 16-bit and float32 (Geo)TIFF scenes whose
useful range is a small, skewed part of the numeric range. 8-bit data is only divided by 255, so the
chips look exactly as the benchmark distributes them; deeper data goes through an explicit
:class:`IntensityScaling` rule instead of being truncated to 8 bits.

Bands: 1 band is replicated to 3 (SAR is single-channel; RGB-pretrained ViTs expect 3), 3 bands are kept,
4 bands are taken as RGBA and the alpha band is dropped. 2 bands (e.g. VV/VH) are refused with a
``DataError``: there is no unique way to colour them, so export one polarisation or compose 3 bands.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from sarmae.errors import ConfigError, DataError

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
TIFF_EXTENSIONS = (".tif", ".tiff")
SCALING_MODES = ("percentile", "linear", "db")
# Percentiles / min-max of big images are estimated on an evenly strided subset of about this many
# values (2-98 % percentiles move by far less than one grey level), which keeps the statistics of a
# 10k x 10k scene at milliseconds instead of seconds.
STATS_MAX_SAMPLES = 262_144
_GDAL_NODATA_TAG = 42113
# A JPEG decoded at 1/s keeps this many times the output size: the DCT's s x s averaging is sharper than the
# antialiasing filter of a plain resize, and with a 1.5x margin the final resize still smooths like it (an
# 800 px chip -> 256 decodes at 1/2; at a margin of 1, 512 -> 256 would be the DCT output unresized).
JPEG_DRAFT_MARGIN = 1.5


@dataclass(frozen=True)
class IntensityScaling:
    """How 16-bit / float pixel values become [0, 1]; 8-bit images ignore it (except ``nodata``).

    * ``percentile``: ``(x - p_low) / (p_high - p_low)`` clipped to [0, 1], percentiles of the valid pixels.
    * ``linear``: ``(x - vmin) / (vmax - vmin)`` clipped; ``vmin``/``vmax`` default to the valid min / max.
    * ``db``: values are power; ``d = 10 * log10(x)`` and then ``(d - vmin) / (vmax - vmin)`` clipped, with
      ``vmin``/``vmax`` in dB, each defaulting to the ``low``/``high`` percentile of the valid dB values.
      Power <= 0 has no dB value and is treated like nodata.

    Statistics are taken jointly over all bands so colour balance survives. A constant image maps to 0.
    ``nodata`` (or the file's GDAL_NODATA tag when ``nodata`` is None) marks pixels whose bands all equal
    it; NaN/inf in any band also makes a pixel invalid. Invalid pixels are excluded from the statistics
    and are 0 in the output.
    """

    mode: str = "percentile"
    low: float = 2.0
    high: float = 98.0
    vmin: float | None = None
    vmax: float | None = None
    nodata: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in SCALING_MODES:
            raise ConfigError(f"intensity scaling mode '{self.mode}' is unknown; use one of {', '.join(SCALING_MODES)}")
        if not 0.0 <= self.low < self.high <= 100.0:
            raise ConfigError(
                f"intensity scaling percentiles low={self.low}, high={self.high}: need 0 <= low < high <= 100"
            )
        if self.vmin is not None and self.vmax is not None and not self.vmin < self.vmax:
            raise ConfigError(f"intensity scaling vmin={self.vmin}, vmax={self.vmax}: need vmin < vmax")

    @classmethod
    def from_config(cls, cfg: dict | str | IntensityScaling | None) -> IntensityScaling:
        """Build from a config section (``{"mode": "db", "vmin": -25, "vmax": 0}``), a mode name or None."""
        if cfg is None:
            return cls()
        if isinstance(cfg, IntensityScaling):
            return cfg
        if isinstance(cfg, str):
            return cls(mode=cfg)
        if not isinstance(cfg, dict):
            raise ConfigError(f"intensity scaling {cfg!r}: expected a mapping such as {{mode: percentile}}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(
                f"intensity scaling: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = dict(cfg)
        for key in ("low", "high", "vmin", "vmax", "nodata"):
            if values.get(key) is not None:
                try:
                    values[key] = float(values[key])
                except (TypeError, ValueError):
                    raise ConfigError(f"intensity scaling {key}={values[key]!r}: expected a number") from None
        return cls(**values)


def read_image(path: str | Path, scaling: IntensityScaling | None = None) -> np.ndarray:
    """Read an image as float32 ``(H, W, 3)`` in [0, 1]; see :func:`read_image_with_mask`."""
    return read_image_with_mask(path, scaling)[0]


def read_image_with_mask(path: str | Path, scaling: IntensityScaling | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read an image and its valid-pixel mask.

    Returns ``(image float32 (H, W, 3) in [0, 1], valid bool (H, W))``. Raises ``DataError`` naming the file
    for a missing, empty, corrupt or unsupported file, unusable band counts, or an image with no valid pixel.
    """
    path = check_image_file(path)
    scaling = scaling or IntensityScaling()
    bands, file_nodata = read_bands(path)
    nodata = scaling.nodata if scaling.nodata is not None else file_nodata
    image, valid = bands_to_image(bands, scaling, nodata)
    if not valid.any():
        raise DataError(f"{path}: no valid pixel (all NaN, inf, nodata or, in db mode, <= 0); check the file")
    return image, valid


def check_image_file(path: str | Path) -> Path:
    """``path`` as a Path; ``DataError`` for an unsupported extension, a missing or an empty file."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise DataError(f"{path}: unsupported image type '{ext}'; use one of {', '.join(IMAGE_EXTENSIONS)}")
    if not path.is_file():
        raise DataError(f"{path}: no such image file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes); re-export or remove it")
    return path


def read_bands(path: Path) -> tuple[np.ndarray, float | None]:
    """Raw pixels ``(H, W, 1 or 3)`` in the file's dtype and the file's nodata value (GeoTIFF tag, else None)."""
    if path.suffix.lower() in TIFF_EXTENSIONS:
        data, nodata = _read_tiff(path)
    else:
        data, nodata = _read_pillow(path), None
    return select_bands(data, path), nodata


def bands_to_image(bands: np.ndarray, scaling: IntensityScaling | None, nodata: float | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Raw ``(H, W, 1 or 3)`` pixels -> ``(image float32 (H, W, 3) in [0, 1], valid (H, W))``.

    8-bit (and bool) data is divided by 255 untouched; deeper data follows ``scaling`` (None = the default
    percentile stretch). Invalid pixels (nodata, NaN, inf; <= 0 in dB mode) are set to 0.
    """
    if bands.dtype == np.uint8 or bands.dtype == np.bool_:
        image = np.multiply(bands, np.float32(1 / 255 if bands.dtype == np.uint8 else 1), dtype=np.float32)
        valid = nodata_mask(bands, nodata)
        if valid is None:
            valid = np.ones(bands.shape[:2], dtype=bool)
        else:
            image[~valid] = 0.0
    else:
        image, valid = scale_to_unit(bands, scaling or IntensityScaling(), nodata)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image, valid


def _read_pillow(path: Path) -> np.ndarray:
    """Decode JPEG/PNG/BMP to ``(H, W)`` or ``(H, W, C)``, keeping 16-bit data 16-bit."""
    try:
        with Image.open(path) as img:
            if img.format == "PNG" and img.mode in ("RGB", "RGBA", "LA") and _png_bit_depth(path) == 16:
                # Pillow has no 16-bit colour mode and would silently keep only the high byte.
                return _read_rasterio(path, "16-bit colour PNG")[0]
            mode = img.mode
            if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("RGBA" if "transparency" in img.info or mode == "PA" else "RGB")
            elif mode == "1":
                img = img.convert("L")
            elif mode == "LA":
                img = img.getchannel(0)
            return np.asarray(img)
    except DataError:
        raise
    except Exception as exc:  # decoder errors come in many types (OSError, SyntaxError, zlib.error...)
        raise _decode_error(path, exc) from None


def open_8bit(path: str | Path) -> Image.Image | None:
    """The file, opened but not decoded, when :func:`read_image` would only divide its pixels by 255: an 8-bit
    grey (L) or RGB JPEG/PNG/BMP, as SARDet-100K stores its chips. None for anything else (16-bit, palette,
    alpha, TIFF...), which then takes :func:`read_image`. Knowing the crop before decoding lets
    :func:`read_8bit_region` decode a JPEG at a reduced scale. The caller closes the image."""
    path = check_image_file(path)
    if path.suffix.lower() in TIFF_EXTENSIONS:
        return None
    try:
        img = Image.open(path)
    except Exception as exc:
        raise _decode_error(path, exc) from None
    plain = img.mode == "L" or (img.mode == "RGB" and not (img.format == "PNG" and _png_bit_depth(path) == 16))
    if not plain:
        img.close()
        return None
    return img


def read_8bit_region(img: Image.Image, box: tuple[float, float, float, float], size: int, resample: Image.Resampling
                     ) -> np.ndarray:
    """Decode ``img`` (from :func:`open_8bit`) and resize its ``box`` = (top, left, height, width), in original
    pixels, to ``size`` x ``size``: uint8 ``(size, size)`` for grey, ``(size, size, 3)`` for RGB.

    A JPEG is decoded at the DCT scale 1/2, 1/4 or 1/8 of :func:`draft_scale`, which leaves the box larger
    than ``size`` both ways, so the resize still shrinks and quality stays that of a plain resize; the box is
    mapped to the decoded grid exactly (fractional coordinates), so the geometry is unchanged.
    """
    top, left, height, width = box
    scale = draft_scale(height, width, size) if img.format == "JPEG" else 1
    try:
        if scale > 1:
            full_width = img.width
            drafted = img.draft(img.mode, (full_width // scale, img.height // scale))
            if drafted is not None:
                scale = full_width / drafted[1][2]  # the decoder's real factor (Pillow picks it)
            else:
                scale = 1
        region = (left / scale, top / scale, (left + width) / scale, (top + height) / scale)
        return np.array(img.resize((size, size), resample, box=region))  # writable, for torch
    except Exception as exc:
        raise _decode_error(Path(getattr(img, "filename", "") or "<packed image>"), exc) from None


def draft_scale(height: int, width: int, size: int) -> int:
    """The JPEG DCT reduction (1, 2, 4 or 8) for resizing a ``height`` x ``width`` region to ``size``: the
    largest that leaves at least ``JPEG_DRAFT_MARGIN`` x ``size`` decoded pixels both ways."""
    need = JPEG_DRAFT_MARGIN * size
    return next((s for s in (8, 4, 2) if height >= s * need and width >= s * need), 1)


def _decode_error(path: Path, exc: Exception) -> DataError:
    return DataError(
        f"{path}: cannot decode image ({type(exc).__name__}: {exc}); the file is corrupt or "
        "truncated, re-export or remove it"
    )


def _png_bit_depth(path: Path) -> int:
    with open(path, "rb") as fh:
        header = fh.read(25)  # signature (8) + chunk length/type (8) + width, height (8) + bit depth (1)
    return header[24] if len(header) == 25 else 8


def _read_tiff(path: Path) -> tuple[np.ndarray, float | None]:
    """Decode a (Geo)TIFF to ``(H, W)`` or ``(H, W, C)`` plus its GDAL_NODATA value, if any."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            tag = tif.pages[0].tags.get(_GDAL_NODATA_TAG)
            nodata = _parse_nodata(tag.value) if tag is not None else None
            axes = series.axes
            try:
                data = series.asarray()
            except (KeyError, ValueError) as exc:
                if "imagecodecs" not in str(exc):
                    raise
                return _read_rasterio(path, f"{tif.pages[0].compression.name} compression")
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"{path}: cannot decode TIFF ({type(exc).__name__}: {exc}); the file is corrupt or "
            "truncated, re-export or remove it"
        ) from None
    if data.ndim == 3 and not axes.endswith("S"):
        data = np.moveaxis(data, 0, -1)  # band-sequential (C, H, W) -> (H, W, C)
    return data, nodata


def _read_rasterio(path: Path, what: str) -> tuple[np.ndarray, float | None]:
    """GDAL fallback for what the pure readers cannot decode (LZW TIFF w/o imagecodecs, 16-bit RGB PNG)."""
    try:
        import rasterio
    except ImportError:
        raise DataError(
            f"{path}: {what} needs rasterio or imagecodecs; run `pip install rasterio "
            "imagecodecs` or re-save the file as an uncompressed/deflate TIFF"
        ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NotGeoreferencedWarning for plain images
            with rasterio.open(path) as src:
                data, nodata = src.read(), src.nodata
    except Exception as exc:
        raise DataError(f"{path}: cannot decode image ({type(exc).__name__}: {exc}); re-export or remove it") from None
    return np.moveaxis(data, 0, -1), nodata


def _parse_nodata(value: Any) -> float | None:
    try:
        return float(str(value).strip().strip("\x00"))
    except ValueError:
        return None


def select_bands(data: np.ndarray, path: Path) -> np.ndarray:
    """Return ``(H, W, 1)`` or ``(H, W, 3)``: squeeze, drop alpha, refuse 2 or more than 4 bands."""
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    if data.ndim == 2:
        return data[:, :, None]
    if data.ndim != 3:
        raise DataError(f"{path}: {data.ndim}-D image {tuple(data.shape)}; expected (H, W) or (H, W, bands)")
    bands = data.shape[2]
    if bands == 4:
        return data[:, :, :3]
    if bands == 3:
        return data
    hint = " (e.g. VV/VH): export one band, or compose 3 bands" if bands == 2 else ": export 1 or 3 bands"
    raise DataError(f"{path}: {bands} bands are not supported{hint}")


def nodata_mask(bands: np.ndarray, nodata: float | None) -> np.ndarray | None:
    """``(H, W)`` True where not every band equals ``nodata``; None when there is no nodata value."""
    if nodata is None or math.isnan(nodata):
        return None
    return ~np.all(bands == nodata, axis=2)


def intensity_values(bands: np.ndarray, scaling: IntensityScaling, nodata: float | None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The values ``scaling`` stretches and where they are valid: float32 copies of real data, amplitude
    (or power for dB) of complex SLC data, then 10·log10 in dB mode. Invalid: nodata, NaN, inf, <= 0 in dB."""
    if np.iscomplexobj(bands):  # SLC: amplitude, or power for dB
        mag = np.abs(bands).astype(np.float32)
        values = mag * mag if scaling.mode == "db" else mag
        mask = None
    else:
        values = bands.astype(np.float32)
        mask = nodata_mask(bands, nodata)
    valid = np.all(np.isfinite(values), axis=2)
    if mask is not None:
        valid &= mask
    if scaling.mode == "db":
        with np.errstate(divide="ignore", invalid="ignore"):
            valid &= np.all(values > 0, axis=2)
            values = 10.0 * np.log10(values)
    return values, valid


def intensity_bounds(samples: np.ndarray, scaling: IntensityScaling) -> tuple[float, float]:
    """``(lo, hi)`` mapped to 0 and 1: fixed ``vmin``/``vmax`` where given, else min..max (linear) or the
    ``low``..``high`` percentiles (min..max when those coincide). ``samples``: valid values, not empty."""
    if scaling.mode == "linear":
        lo = scaling.vmin if scaling.vmin is not None else float(samples.min())
        hi = scaling.vmax if scaling.vmax is not None else float(samples.max())
        return lo, hi
    if scaling.mode == "db" and scaling.vmin is not None and scaling.vmax is not None:
        return scaling.vmin, scaling.vmax
    p_lo, p_hi = (float(v) for v in np.percentile(samples, [scaling.low, scaling.high]))
    if p_hi <= p_lo:  # mostly-constant image: fall back to min..max
        p_lo, p_hi = float(samples.min()), float(samples.max())
    lo = scaling.vmin if scaling.vmin is not None else p_lo
    hi = scaling.vmax if scaling.vmax is not None else p_hi
    return lo, hi


def scale_to_unit(bands: np.ndarray, scaling: IntensityScaling, nodata: float | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Map ``(H, W, C)`` 16-bit / float / complex data to [0, 1] following ``scaling``; returns (image, valid)."""
    values, valid = intensity_values(bands, scaling, nodata)
    samples = _valid_samples(values, valid)
    if samples.size == 0:
        return np.zeros_like(values), valid
    lo, hi = intensity_bounds(samples, scaling)
    if hi <= lo:
        return np.zeros_like(values), valid
    values -= np.float32(lo)  # in place: ``values`` is already a private float32 copy
    values *= np.float32(1.0 / (hi - lo))
    np.clip(values, 0.0, 1.0, out=values)
    values[~valid] = 0.0
    return values, valid


def _valid_samples(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Valid values for statistics, strided down to about ``STATS_MAX_SAMPLES`` without a full copy."""
    flat, flat_valid = values.reshape(-1, values.shape[2]), valid.reshape(-1)
    step = max(1, -(-flat.size // STATS_MAX_SAMPLES))
    samples = flat[::step][flat_valid[::step]].ravel()
    if samples.size == 0 and step > 1:  # valid pixels exist but the stride missed them all
        samples = flat[flat_valid].ravel()
    return samples
