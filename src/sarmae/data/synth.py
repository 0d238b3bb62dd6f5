"""The embedded synthetic SAR detection benchmark, written in the SARDet-100K layout.

Real SAR archives cannot be downloaded here, so tests, the demo and CPU smoke runs use this generator.
It is meant to be worth learning, not a toy: six categories with distinct radar signatures, three clutter
types, multiplicative speckle, random contrast, orientation and size, small objects and empty scenes.
"tank" is drawn as in SARDet-100K's sources (OGSOD, MSAR), where it mostly means oil storage tanks: farms of
round tanks of one diameter (8-24 px) in rows on a pad, on land near towns and coasts, each a bright ring
(laid-over rim, near-range double-bounce arc, dark floating roof or brighter fixed roof) with a radar shadow
on its far side.

Rendering model (linear intensity, per pixel)::

    I = Gamma(L, 1/L) * (clutter + noise_floor + object_bodies) + point_responses

* ``clutter``: scene reflectivity built in dB (sea dark and smooth, land mid and textured, urban bright
  and blocky, runways / water / parking lots near the noise floor), with wakes and pads edited in.
* ``object_bodies``: distributed reflectivity of each object's shape (anti-aliased polygons).
* ``point_responses``: strong scatterers (superstructure, engines, pier heads...) convolved with a
  separable sinc^2 PSF, hence the side-lobe crosses along the image (range / azimuth) axes. They are
  coherent, so they are not speckled; neither are a few unlabelled clutter spikes (false-alarm bait).
* Speckle: ``L`` looks, drawn per image in 1..4; the intensity of distributed targets is gamma distributed.

8-bit mapping (documented so users can invert it)::

    u8 = round(255 * clip((10 * log10(I) + gain - lo) / (hi - lo), 0, 1))

with per-image ``gain`` ~ U(-3, 3) dB, ``lo`` ~ U(-31, -25) dB and ``hi`` ~ U(4, 12) dB (varying contrast).

Boxes are read off the rendering: an object's box is the tight box of the pixels where its own noise-free
intensity (body + its point responses) reaches half its nominal body level, clipped to the image. Objects
whose support overlaps an earlier one, or that keep less than 2x2 visible pixels, are not drawn at all.

Scale (``zoom`` >= 1, default 1): SARDet-100K chips (mostly 224-512 px) are resized up to the detector's
800x800 input, so at the model's input an object spans ~1.6-3.6x more pixels than in the archive and the
speckle is spatially correlated (one native pixel covers several input pixels). ``zoom`` reproduces this:
the scene is rendered exactly as above at its native side ``n = ceil(size / zoom)`` (same objects, same
speckle per native pixel), then the final linear intensity is resized bilinearly (pixel centres aligned,
like ``torch.nn.functional.interpolate(..., align_corners=False)``) to ``size`` x ``size`` before the 8-bit
mapping, and every box is scaled by ``size / n`` (fractional boxes, still exact and inside the image).
Object counts follow the native area, as a magnified chip shows less ground. At zoom 1 nothing is resized
and boxes are integer pixels; the random draws depend only on ``n``, so ``(rng, 64 px)`` and
``(same rng, 128 px, zoom 2)`` show one scene.

Determinism: image ``i`` of split ``s`` uses ``np.random.default_rng([seed, code(s), i])``, so the same seed
gives byte-identical files, and asking for more images leaves the first ones unchanged.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from sarmae.data.coco import SARDET_CLASSES
from sarmae.errors import ConfigError, DataError
from sarmae.files import write_json_atomic, writing

SHIP, AIRCRAFT, CAR, TANK, BRIDGE, HARBOR = range(6)
WATER, LAND, URBAN, PAVED = range(4)  # scene region codes

SPLITS = ("train", "val", "test", "unlabeled")
SPLIT_CODES = {name: i for i, name in enumerate(SPLITS)}
# File numbers are ``offset + index + 1``: 7-digit names unique across splits that never shift when a
# split grows, so image i keeps its name and pixels.
SPLIT_OFFSETS = {"train": 0, "val": 1_000_000, "test": 2_000_000, "unlabeled": 3_000_000}
MAX_PER_SPLIT = 999_999
MIN_SIZE, MAX_SIZE = 32, 4096
MIN_NATIVE = 16  # smallest native scene a zoomed chip may show
MANIFEST = "synth.json"
GENERATOR_VERSION = 2  # 2: oil-tank farms replace military tanks; zoom
EMPTY_SCENE_PROB = 0.07
SCENES = ("sea", "coast", "river", "airfield", "rural", "urban")
SCENE_PROBS = (0.20, 0.20, 0.17, 0.16, 0.17, 0.10)

Box = tuple[int, int, int, int]  # x, y, w, h in pixels
FloatBox = tuple[float, float, float, float]  # the same, of a zoomed chip
ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _lin(db):
    """dB -> linear intensity (float or array)."""
    return np.power(np.float32(10.0), np.asarray(db, dtype=np.float32) / np.float32(10.0))


def _cover(d: np.ndarray, half: float) -> np.ndarray:
    """Anti-aliased 1-D coverage of ``|d| <= half`` (a pixel is 1 wide), in [0, 1]."""
    return np.clip(half + 0.5 - np.abs(d), 0.0, 1.0)


def _box(u: np.ndarray, v: np.ndarray, hl: float, hw: float) -> np.ndarray:
    return _cover(u, hl) * _cover(v, hw)


def _disk(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    return np.clip(r + 0.5 - np.sqrt(u * u + v * v), 0.0, 1.0)


@lru_cache(maxsize=8)
def _freq_radius(size: int) -> np.ndarray:
    """(size, size//2+1) radial frequency of an rfft2 grid, DC set to inf (zero-mean fields)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    k = np.sqrt(fx * fx + fy * fy)
    k[0, 0] = np.inf
    return k


def _fractal(rng: np.random.Generator, size: int, beta: float) -> np.ndarray:
    """(size, size) float32 1/f^beta noise, zero mean, unit std: larger beta, smoother texture."""
    k = _freq_radius(size)
    spec = (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape)) * k ** (-beta / 2)
    f = np.fft.irfft2(spec, s=(size, size)).astype(np.float32)
    return (f - f.mean()) / (f.std() + 1e-12)


@lru_cache(maxsize=8)
def _axes(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as a (1, S) row and an (S, 1) column."""
    c = np.arange(size, dtype=np.float32) + 0.5
    return c[None, :], c[:, None]


@dataclass
class _Line:
    """A random line through the image: ``t`` along it, ``d`` across it, plus a sinusoidal meander."""

    px: float
    py: float
    angle: float
    amps: tuple[float, ...] = ()
    freqs: tuple[float, ...] = ()
    phases: tuple[float, ...] = ()

    def frame(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(t, d) over the image, (S, S) each; ``d`` already includes the meander."""
        x, y = _axes(size)
        c, s = math.cos(self.angle), math.sin(self.angle)
        t = (x - self.px) * c + (y - self.py) * s
        d = -(x - self.px) * s + (y - self.py) * c
        for a, f, p in zip(self.amps, self.freqs, self.phases, strict=True):
            d = d - a * np.sin(f * t + p)
        return t, d

    def offset(self, t: float) -> tuple[float, float]:
        """Meander offset and its slope at ``t``."""
        m = sum(a * math.sin(f * t + p) for a, f, p in zip(self.amps, self.freqs, self.phases, strict=True))
        dm = sum(a * f * math.cos(f * t + p) for a, f, p in zip(self.amps, self.freqs, self.phases, strict=True))
        return m, dm

    def point(self, t: float, d: float = 0.0) -> tuple[float, float]:
        """Image coordinates of the point at ``t`` and ``d`` across the meandering centre line."""
        m, _ = self.offset(t)
        c, s = math.cos(self.angle), math.sin(self.angle)
        return self.px + t * c - (m + d) * s, self.py + t * s + (m + d) * c

    def tangent(self, t: float) -> float:
        _, dm = self.offset(t)
        return self.angle + math.atan(dm)


def _random_line(rng: np.random.Generator, size: int, meander: float) -> _Line:
    n = int(rng.integers(1, 3)) if meander > 0 else 0
    return _Line(
        px=float(rng.uniform(0.25, 0.75) * size),
        py=float(rng.uniform(0.25, 0.75) * size),
        angle=float(rng.uniform(0, math.pi)),
        amps=tuple(float(a) for a in rng.uniform(0.2, 1.0, n) * meander),
        freqs=tuple(float(f) for f in rng.uniform(0.5, 2.5, n) * 2 * math.pi / size),
        phases=tuple(float(p) for p in rng.uniform(0, 2 * math.pi, n)),
    )


@dataclass
class _Canvas:
    """One image being rendered: clutter in dB plus region codes, object layers in linear intensity."""

    size: int
    res: float  # PSF main-lobe half width (first null), pixels
    db: np.ndarray  # (S, S) float32 clutter reflectivity, dB
    region: np.ndarray  # (S, S) uint8 region code
    bodies: np.ndarray = field(init=False)  # (S, S) float32 linear
    points: np.ndarray = field(init=False)  # (S, S) float32 linear
    occupied: np.ndarray = field(init=False)  # (S, S) bool, supports of placed objects
    labels: list[tuple[int, Box]] = field(default_factory=list)

    def __post_init__(self) -> None:
        shape = (self.size, self.size)
        self.bodies = np.zeros(shape, np.float32)
        self.points = np.zeros(shape, np.float32)
        self.occupied = np.zeros(shape, bool)

    def _patch(self, cx: float, cy: float, theta: float, radius: float):
        s = self.size
        x0, x1 = max(int(cx - radius), 0), min(int(math.ceil(cx + radius)) + 1, s)
        y0, y1 = max(int(cy - radius), 0), min(int(math.ceil(cy + radius)) + 1, s)
        if x1 - x0 < 2 or y1 - y0 < 2:
            return None
        xs = np.arange(x0, x1, dtype=np.float32) + 0.5 - cx
        ys = np.arange(y0, y1, dtype=np.float32) + 0.5 - cy
        c, sn = math.cos(theta), math.sin(theta)
        u = xs[None, :] * c + ys[:, None] * sn
        v = -xs[None, :] * sn + ys[:, None] * c
        return (slice(y0, y1), slice(x0, x1)), xs, ys, u, v

    def region_at(self, x: float, y: float) -> int | None:
        if 0 <= x < self.size and 0 <= y < self.size:
            return int(self.region[int(y), int(x)])
        return None

    def edit_db(
        self, cx: float, cy: float, theta: float, radius: float, fn: ShapeFn,
        only: int | None = None, set_region: int | None = None,
    ) -> None:
        """Add ``fn(u, v)`` dB to the clutter in a rotated patch (only over region ``only`` if given)."""
        p = self._patch(cx, cy, theta, radius)
        if p is None:
            return
        sl, _, _, u, v = p
        delta = fn(u, v).astype(np.float32)
        if only is not None:
            delta = np.where(self.region[sl] == only, delta, 0.0)
        self.db[sl] += delta
        if set_region is not None:
            self.region[sl][delta != 0] = set_region

    def spike(self, x: float, y: float, amp: float) -> None:
        """An unlabelled coherent point response (clutter spike)."""
        r = 3 * self.res + 1
        x0, x1 = max(int(x - r), 0), min(int(x + r) + 1, self.size)
        y0, y1 = max(int(y - r), 0), min(int(y + r) + 1, self.size)
        if x1 > x0 and y1 > y0:
            cols = np.sinc((np.arange(x0, x1, dtype=np.float32) + 0.5 - x) / self.res) ** 2
            rows = np.sinc((np.arange(y0, y1, dtype=np.float32) + 0.5 - y) / self.res) ** 2
            self.points[y0:y1, x0:x1] += amp * np.outer(rows, cols)

    def stamp(
        self, cat: int, cx: float, cy: float, theta: float, radius: float, shape: ShapeFn,
        level_db: float, scatterers: Sequence[tuple[float, float, float]] = (),
    ) -> Box | None:
        """Render one labelled object; returns its box, or None (nothing drawn) if it does not fit.

        ``shape(u, v)`` gives relative reflectivity (~coverage) in the object frame (u along ``theta``);
        scatterers are ``(u, v, amplitude relative to the body level)``.
        """
        p = self._patch(cx, cy, theta, radius + 3 * self.res + 1)
        if p is None:
            return None
        sl, xs, ys, u, v = p
        level = float(_lin(level_db))
        body = shape(u, v).astype(np.float32) * np.float32(level)
        pts = np.zeros_like(body)
        c, s = math.cos(theta), math.sin(theta)
        for su, sv, amp in scatterers:
            px, py = su * c - sv * s, su * s + sv * c
            rows = np.sinc((ys - py) / self.res) ** 2
            cols = np.sinc((xs - px) / self.res) ** 2
            pts += np.float32(amp * level) * np.outer(rows, cols)
        support = (body + pts) >= 0.5 * level
        n = int(support.sum())
        if n < 4:
            return None
        if int((support & self.occupied[sl]).sum()) > 0.05 * n:
            return None
        rows_on = np.flatnonzero(support.any(axis=1))
        cols_on = np.flatnonzero(support.any(axis=0))
        x0, y0 = sl[1].start + int(cols_on[0]), sl[0].start + int(rows_on[0])
        w, h = int(cols_on[-1] - cols_on[0]) + 1, int(rows_on[-1] - rows_on[0]) + 1
        if w < 2 or h < 2:
            return None
        self.bodies[sl] += body
        self.points[sl] += pts
        self.occupied[sl] |= support
        box = (x0, y0, w, h)
        self.labels.append((cat, box))
        return box

    def sample(self, rng: np.random.Generator, regions: Sequence[int], tries: int = 30):
        """A random pixel centre inside one of ``regions``, or None."""
        for _ in range(tries):
            x, y = rng.uniform(0, self.size, 2)
            if self.region[int(y), int(x)] in regions:
                return float(x), float(y)
        return None


# ----------------------------------------------------------------------------------------- clutter
def _sea_db(rng: np.random.Generator, s: int) -> np.ndarray:
    db = rng.uniform(-24, -17) + rng.uniform(0.6, 1.6) * _fractal(rng, s, 3.2)
    if rng.random() < 0.5:  # swell
        x, y = _axes(s)
        a, lam = rng.uniform(0, math.pi), rng.uniform(10, 40)
        db = db + rng.uniform(0.3, 1.2) * np.sin((x * math.cos(a) + y * math.sin(a)) * (2 * math.pi / lam))
    return db


def _land_db(rng: np.random.Generator, s: int) -> np.ndarray:
    db = rng.uniform(-13, -8) + rng.uniform(1.5, 3.5) * _fractal(rng, s, rng.uniform(2.0, 2.8))
    if rng.random() < 0.6:  # agricultural patchwork: quantised smooth noise
        db = db + rng.uniform(1.5, 3.0) * np.round(1.2 * _fractal(rng, s, 3.5))
    return db


def _urban_db(rng: np.random.Generator, s: int) -> np.ndarray:
    """Rotated blocks of buildings with bright double-bounce edges on some of them."""
    x, y = _axes(s)
    a, cell = rng.uniform(0, math.pi / 2), rng.uniform(6, 16)
    u = (x * math.cos(a) + y * math.sin(a)) / cell
    v = (-x * math.sin(a) + y * math.cos(a)) / cell
    n = 64
    iu, iv = np.floor(u).astype(np.int64) % n, np.floor(v).astype(np.int64) % n
    blocks = rng.normal(0, 3.0, (n, n)).astype(np.float32)
    edged = rng.random((n, n)) < 0.5
    edge = edged[iu, iv] & (((u % 1) * cell < 1.2) | ((v % 1) * cell < 1.2))
    return rng.uniform(-7, -2) + blocks[iu, iv] + np.where(edge, rng.uniform(4, 8), 0.0)


def _water_db(rng: np.random.Generator, s: int) -> np.ndarray:
    return rng.uniform(-26, -20) + 0.8 * _fractal(rng, s, 3.5)


def _urban_patches(rng: np.random.Generator, cv: _Canvas, fraction: float) -> None:
    """Turn the highest ``fraction`` of a smooth field over land into urban clutter."""
    s = cv.size
    field_ = _fractal(rng, s, 3.5)
    mask = (field_ > np.quantile(field_, 1 - fraction)) & (cv.region == LAND)
    cv.db = np.where(mask, _urban_db(rng, s), cv.db).astype(np.float32)
    cv.region[mask] = URBAN


def _stripe(cv: _Canvas, d: np.ndarray, center: float, half: float, db: float, region: int, edge_db=0.0):
    """A straight dark band (runway, taxiway, road) at ``center`` across ``d`` with optional bright edges."""
    dist = np.abs(d - center)
    inside = dist <= half
    # Paved surfaces keep a tenth of the surrounding texture: smooth, but not a flat colour.
    cv.db = np.where(inside, db + 0.1 * (cv.db - cv.db.mean()), cv.db).astype(np.float32)
    cv.region[inside] = region
    if edge_db:
        cv.db = np.where(np.abs(dist - half) < 0.7, cv.db + edge_db, cv.db).astype(np.float32)


# ----------------------------------------------------------------------------------------- objects
def _ship(rng: np.random.Generator, cv: _Canvas, cx: float, cy: float, theta: float, length: float,
          wake: bool = True) -> Box | None:
    hl = length / 2
    hw = max(length * rng.uniform(0.09, 0.17) / 2, 0.8)
    bow = rng.uniform(0.2, 0.35) * length
    us, ss = rng.uniform(-0.3, 0.1) * length, 0.15 * length

    def shape(u, v):
        taper = np.clip((hl - u) / bow, 0.2, 1.0)
        return _cover(u, hl) * _cover(v, hw * taper) * (1 + 0.6 * np.exp(-(((u - us) / ss) ** 2)))

    k = min(1 + int(length // 15), 5)
    scat = [(float(rng.uniform(-0.4, 0.3) * length), float(rng.uniform(-0.4, 0.4) * hw),
             float(rng.uniform(3, 12))) for _ in range(k)]
    box = cv.stamp(SHIP, cx, cy, theta, hl + 1, shape, rng.uniform(-5, 4), scat)
    if box is not None and wake and rng.random() < 0.6:
        wl = rng.uniform(1, 3) * length
        depth, kelvin = rng.uniform(3, 7), rng.random() < 0.4
        ox, oy = cx - (hl + wl / 2) * math.cos(theta), cy - (hl + wl / 2) * math.sin(theta)

        def wake_fn(u, v):
            back = np.clip(wl / 2 - u, 0, wl) / wl  # 0 at the stern, 1 at the wake's end
            dark = -depth * (1 - back) * _cover(u, wl / 2) * _cover(v, hw * (1 + 2 * back))
            if kelvin:
                arm = np.abs(np.abs(v) - math.tan(math.radians(19.5)) * back * wl)
                dark = dark + 2.0 * (1 - back) * _cover(u, wl / 2) * np.clip(1 - arm, 0, 1)
            return dark

        cv.edit_db(ox, oy, theta, wl / 2 + 3 * hw + 2, wake_fn, only=WATER)
    return box


def _aircraft(rng: np.random.Generator, cv: _Canvas, cx: float, cy: float, theta: float,
              length: float) -> Box | None:
    hl, hw = length / 2, max(length * rng.uniform(0.04, 0.065), 0.8)
    span = length * rng.uniform(0.8, 1.1)
    chord, sweep = length * rng.uniform(0.1, 0.17), rng.uniform(0.2, 0.7)
    uw = rng.uniform(0.0, 0.15) * length
    tspan, tchord = length * rng.uniform(0.28, 0.4), length * 0.08
    ut = -hl + tchord

    def wing(u, v, u0, half_span, c0):
        av = np.abs(v)
        c = c0 * (1 - 0.6 * np.clip(av / half_span, 0, 1))
        return _cover(v, half_span) * _cover(u - (u0 - sweep * av - c / 2), np.maximum(c / 2, 0.5))

    def shape(u, v):
        body = _box(u, v, hl, hw)
        return np.maximum(np.maximum(body, 0.8 * wing(u, v, uw, span / 2, chord)),
                          0.8 * wing(u, v, ut + tchord, tspan / 2, tchord))

    sp = span / 2
    scat = [(hl - 1, 0.0, rng.uniform(2, 8)), (-hl + 1, 0.0, rng.uniform(2, 6))]
    for side in (-1, 1):  # engines and wing tips
        scat.append((uw - sweep * 0.35 * sp - chord / 3, side * 0.35 * sp, rng.uniform(3, 10)))
        if rng.random() < 0.5:
            scat.append((uw - sweep * sp - chord * 0.2, side * (sp - 1), rng.uniform(1, 4)))
    return cv.stamp(AIRCRAFT, cx, cy, theta, math.hypot(hl, sp) + 1, shape, rng.uniform(-6, 2), scat)


def _car(rng: np.random.Generator, cv: _Canvas, cx: float, cy: float, theta: float) -> Box | None:
    hl, hw = rng.uniform(2.0, 4.0), rng.uniform(1.0, 1.9)
    scat = [(rng.uniform(-hl, hl) * 0.6, 0.0, rng.uniform(1.5, 6))]
    return cv.stamp(CAR, cx, cy, theta, hl + 1, lambda u, v: _box(u, v, hl, hw), rng.uniform(-4, 5), scat)


def _bridge(rng: np.random.Generator, cv: _Canvas, cx: float, cy: float, theta: float, length: float
            ) -> Box | None:
    hl, hw = length / 2, rng.uniform(1.2, 3.5)
    edge = rng.uniform(0.3, 1.0)

    def shape(u, v):
        rim = np.clip(1.0 - np.abs(np.abs(v) - hw), 0, 1)  # double-bounce lines along both sides
        return _box(u, v, hl, hw) * (1 + edge * rim)

    k = int(rng.integers(1, 4))
    scat = [(float(rng.uniform(-0.35, 0.35) * length), float(rng.choice([-hw, hw])), float(rng.uniform(2, 6)))
            for _ in range(k)]
    return cv.stamp(BRIDGE, cx, cy, theta, math.hypot(hl, hw) + 1, shape, rng.uniform(-4, 4), scat)


def _harbor(rng: np.random.Generator, cv: _Canvas, cx: float, cy: float, theta: float
            ) -> tuple[Box | None, list[tuple[float, float]]]:
    """Piers from a quay at (cx, cy) into the sea along ``theta``; returns the box and berth centres."""
    n = int(rng.integers(2, 6))
    gap = rng.uniform(8, 20)
    lmax = min(80.0, cv.size * 0.35)
    lengths = rng.uniform(min(12.0, lmax * 0.6), lmax, n)
    widths = rng.uniform(1.0, 2.5, n)
    offs = (np.arange(n) - (n - 1) / 2) * gap
    span = (n - 1) * gap + 2 * widths.max() + 4
    qw = rng.uniform(1.5, 3.0)
    heads = rng.random(n) < 0.3

    def shape(u, v):
        out = _box(u + qw, v, qw, span / 2)
        for length, w, o, head in zip(lengths, widths, offs, heads, strict=True):
            pier = _box(u - length / 2, v - o, length / 2, w)
            if head:
                pier = np.maximum(pier, _box(u - length + w, v - o, w, 3 * w))
            out = np.maximum(out, pier)
        return out

    scat = [(float(length - 1), float(o), float(rng.uniform(2, 8)))
            for length, o in zip(lengths, offs, strict=True) if rng.random() < 0.6]
    radius = math.hypot(lengths.max() + 2 * qw, span / 2) + 2
    box = cv.stamp(HARBOR, cx, cy, theta, radius, shape, rng.uniform(-5, 1), scat)
    c, s = math.cos(theta), math.sin(theta)
    berths = []
    for i in range(n - 1):
        bu, bv = rng.uniform(0.3, 0.5) * min(lengths[i], lengths[i + 1]), (offs[i] + offs[i + 1]) / 2
        berths.append((cx + bu * c - bv * s, cy + bu * s + bv * c))
    return box, berths


def _ship_length(rng: np.random.Generator, size: int) -> float:
    hi = min(140.0, 0.5 * size)
    return float(math.exp(rng.uniform(math.log(6.0), math.log(hi))))


def _add_ships(rng: np.random.Generator, cv: _Canvas, count: int) -> None:
    for _ in range(count):
        pos = cv.sample(rng, (WATER,))
        if pos is None:
            return
        theta, length = rng.uniform(0, 2 * math.pi), _ship_length(rng, cv.size)
        ends = [(pos[0] + e * length / 2 * math.cos(theta), pos[1] + e * length / 2 * math.sin(theta))
                for e in (-1, 1)]
        if all(cv.region_at(*p) in (WATER, None) for p in ends):
            _ship(rng, cv, pos[0], pos[1], theta, length)


def _add_car_lot(rng: np.random.Generator, cv: _Canvas) -> None:
    """A dark parking pad with a grid of cars (most slots taken)."""
    pos = cv.sample(rng, (LAND, URBAN))
    if pos is None:
        return
    theta = rng.uniform(0, math.pi)
    rows, cols = int(rng.integers(1, 3)), int(rng.integers(2, 7))
    pitch_c, pitch_r = rng.uniform(4.5, 6.5), rng.uniform(10, 14)
    hl, hw = rows * pitch_r / 2 + 2, cols * pitch_c / 2 + 2
    cv.edit_db(pos[0], pos[1], theta, math.hypot(hl, hw) + 1,
               lambda u, v: -12.0 * _box(u, v, hl, hw), set_region=PAVED)
    c, s = math.cos(theta), math.sin(theta)
    for r in range(rows):
        for k in range(cols):
            if rng.random() < 0.3:
                continue
            u = (r - (rows - 1) / 2) * pitch_r + rng.normal(0, 0.5)
            v = (k - (cols - 1) / 2) * pitch_c + rng.normal(0, 0.3)
            _car(rng, cv, pos[0] + u * c - v * s, pos[1] + u * s + v * c, theta + rng.normal(0, 0.08))


def _add_cars_on_road(rng: np.random.Generator, cv: _Canvas, road: _Line, count: int) -> None:
    t0 = rng.uniform(-0.4, 0.4) * cv.size
    for i in range(count):
        t = t0 + i * rng.uniform(8, 16)
        x, y = road.point(t, rng.uniform(-1.5, 1.5))
        _car(rng, cv, x, y, road.tangent(t) + rng.normal(0, 0.05))


def _oil_tank(rng: np.random.Generator, cv: _Canvas, cx: float, cy: float, look: float, diameter: float,
              floating: bool) -> Box | None:
    """One oil storage tank (a vertical cylinder) seen by a radar looking along ``look``.

    In the object frame ``u`` is ground range (away from the radar) and ``v`` azimuth. The top rim is laid
    over towards the radar by ``lay`` (height / tan(incidence)), so the near wall shows as a bright band
    between the base and top circles; the wall foot and the ground make a bright double-bounce arc on the
    near side of the base circle, with a glint where it faces the radar; the ground behind the tank (far
    side) is in radar shadow. Floating roofs are smooth and dark, with a bright crescent where the roof meets
    the inner far wall; fixed (cone or dome) roofs are moderately bright with a glint at the apex. The rim
    is bright all round (>= half the body level), so the tank reads as a ring.

    The box is the tank's own circular extent (base circle united with the laid-over top circle). The shadow
    is not part of it: it is ground that returns no echo, and annotators of SAR tank farms (OGSOD, MSAR) box
    the bright structure.
    """
    r = diameter / 2
    lay = r * rng.uniform(0.1, 0.35)
    rim_far, rim_near = rng.uniform(0.6, 0.9), rng.uniform(1.2, 2.2)
    wall, bounce = rng.uniform(0.8, 1.5), rng.uniform(1.5, 3.5)
    roof = rng.uniform(0.08, 0.3) if floating else rng.uniform(0.45, 0.8)
    crescent = rng.uniform(0.8, 1.6)

    def shape(u, v):
        ut = u + lay  # the top circle is centred at u = -lay
        rb, rt = np.sqrt(u * u + v * v), np.sqrt(ut * ut + v * v)
        near_t = np.clip(-ut / np.maximum(rt, 1e-3), 0, 1)  # 1 on the radar-facing side of the top circle
        near_b = np.clip(-u / np.maximum(rb, 1e-3), 0, 1)
        out = roof * np.clip(r + 0.5 - rt, 0, 1)
        out = np.maximum(out, np.clip(1.5 - np.abs(rt - (r - 1)), 0, 1) * (rim_far + (rim_near - rim_far) * near_t))
        edge = np.sqrt(np.maximum(r * r - v * v, 0))  # the near wall spans u in [-edge - lay, -edge]
        out = np.maximum(out, wall * _cover(v, r - 0.5) * _cover(u + edge + lay / 2, lay / 2))
        out = np.maximum(out, bounce * near_b**2 * np.clip(1 - np.abs(rb - r), 0, 1))
        if floating:
            out = np.maximum(out, crescent * np.clip(ut / np.maximum(rt, 1e-3), 0, 1)
                             * np.clip(1 - np.abs(rt - (r - 2.2)), 0, 1))
        return out

    scat = [(-r, 0.0, float(rng.uniform(2, 6)))] if rng.random() < 0.7 else []
    if not floating:
        scat.append((-lay, 0.0, float(rng.uniform(1, 4))))
    if rng.random() < 0.4:  # stairs or a pipe on the rim
        a = rng.uniform(0, 2 * math.pi)
        scat.append((float((r - 1) * math.cos(a) - lay), float((r - 1) * math.sin(a)), float(rng.uniform(1, 3))))
    box = cv.stamp(TANK, cx, cy, look, r + lay + 1, shape, rng.uniform(-5, 2), scat)
    if box is not None:
        shadow, depth = r * rng.uniform(0.3, 0.8), rng.uniform(8, 15)

        def shade(u, v):
            edge = np.sqrt(np.maximum(r * r - v * v, 0))  # shadow: u in [edge, edge + shadow] behind the tank
            return -depth * _cover(v, r - 0.5) * _cover(u - edge - shadow / 2, shadow / 2)

        cv.edit_db(cx, cy, look, r + shadow + 2, shade)
    return box


def _pad(cv: _Canvas, cx: float, cy: float, theta: float, hl: float, hw: float, level_db: float,
         bund_db: float) -> None:
    """A smooth ground pad (not over water) with an optional bright bund (containment wall) around it."""
    p = cv._patch(cx, cy, theta, math.hypot(hl, hw) + 3)
    if p is None:
        return
    sl, _, _, u, v = p
    dry = cv.region[sl] != WATER
    cover = _box(u, v, hl, hw) * dry
    db = cv.db[sl]
    smooth = np.float32(level_db) + 0.2 * (db - db.mean())
    frame = (_box(u, v, hl + 1, hw + 1) - _box(u, v, hl, hw)) * dry
    cv.db[sl] = (db * (1 - cover) + smooth * cover + bund_db * frame).astype(np.float32)
    cv.region[sl][cover > 0.5] = PAVED


def _add_tank_farm(rng: np.random.Generator, cv: _Canvas) -> None:
    """A tank farm: rows of oil tanks of one diameter on a pad, on land (industrial, urban or coastal)."""
    pos = cv.sample(rng, (LAND, URBAN))
    if pos is None:
        return
    look = float(rng.integers(4)) * math.pi / 2  # range runs along an image axis, radar on any side
    hi = min(24.0, max(8.0, 0.3 * cv.size))
    diameter = math.exp(rng.uniform(math.log(8.0), math.log(hi)))
    rows, cols = 1 + int(rng.random() < 0.5), int(rng.integers(2, 6))
    pitch = diameter * rng.uniform(1.3, 1.7)
    theta = rng.uniform(0, math.pi)
    floating_share = 0.8 if rng.random() < 0.65 else 0.15  # farms are mostly of one roof type
    margin = rng.uniform(2, 8)
    _pad(cv, pos[0], pos[1], theta, rows * pitch / 2 + margin, cols * pitch / 2 + margin,
         rng.uniform(-19, -12), rng.uniform(3, 8) if rng.random() < 0.6 else 0.0)
    c, s = math.cos(theta), math.sin(theta)
    for i in range(rows):
        for k in range(cols):
            u = (i - (rows - 1) / 2) * pitch + rng.normal(0, 0.3)
            v = (k - (cols - 1) / 2) * pitch + rng.normal(0, 0.3)
            x, y = pos[0] + u * c - v * s, pos[1] + u * s + v * c
            if rng.random() < 0.1 or cv.region_at(x, y) != PAVED:  # an empty slot, water or off the image
                continue
            _oil_tank(rng, cv, x, y, look, diameter * rng.uniform(0.93, 1.07), bool(rng.random() < floating_share))


def _n(rng: np.random.Generator, mean: float, area: float) -> int:
    return int(rng.poisson(mean * area))


# ------------------------------------------------------------------------------------------ scenes
def _scene_sea(rng, cv: _Canvas, area: float, objects: bool) -> None:
    cv.db, cv.region[:] = _sea_db(rng, cv.size), WATER
    if not objects:
        return
    if rng.random() < 0.15:  # close-up of one large ship, as in chips cropped around a single vessel
        x, y = rng.uniform(0.3, 0.7, 2) * cv.size
        _ship(rng, cv, float(x), float(y), rng.uniform(0, 2 * math.pi), rng.uniform(0.45, 0.75) * cv.size)
    _add_ships(rng, cv, max(1, _n(rng, 3.0, area)))


def _scene_coast(rng, cv: _Canvas, area: float, objects: bool) -> None:
    s = cv.size
    coast = _random_line(rng, s, meander=rng.uniform(3, 0.08 * s + 3))
    _, d = coast.frame(s)
    sea = d < 0
    cv.db = np.where(sea, _sea_db(rng, s), _land_db(rng, s)).astype(np.float32)
    cv.region[:] = np.where(sea, WATER, LAND)
    cv.db[np.abs(d) < 1.0] += rng.uniform(0, 4)  # surf / embankment
    if rng.random() < 0.5:
        _urban_patches(rng, cv, rng.uniform(0.05, 0.25))
    if not objects:
        return
    for _ in range(1 + int(rng.random() < 0.25 * area)):
        t0 = rng.uniform(-0.35, 0.35) * s
        x, y = coast.point(t0)
        seaward = coast.tangent(t0) - math.pi / 2 + rng.normal(0, 0.15)  # d < 0 is the sea side
        _, berths = _harbor(rng, cv, x, y, seaward)
        for bx, by in berths:
            if rng.random() < 0.5 and cv.region_at(bx, by) == WATER:
                _ship(rng, cv, bx, by, seaward + rng.normal(0, 0.05),
                      rng.uniform(6, 14), wake=False)
    _add_ships(rng, cv, _n(rng, 1.5, area))
    if rng.random() < 0.2:
        _add_car_lot(rng, cv)
    if rng.random() < 0.25:  # coastal refinery / oil terminal
        _add_tank_farm(rng, cv)


def _scene_river(rng, cv: _Canvas, area: float, objects: bool) -> None:
    s = cv.size
    river = _random_line(rng, s, meander=rng.uniform(2, 0.06 * s + 2))
    _, d = river.frame(s)
    width = rng.uniform(10, max(12.0, min(60.0, s / 5)))
    water = np.abs(d) <= width / 2
    cv.db, cv.region[:] = _land_db(rng, s), LAND
    if rng.random() < 0.4:
        _urban_patches(rng, cv, rng.uniform(0.1, 0.3))
    cv.db = np.where(water, _water_db(rng, s), cv.db).astype(np.float32)
    cv.region[water] = WATER
    cv.db[np.abs(np.abs(d) - width / 2) < 0.8] += rng.uniform(0, 3)  # banks
    if not objects:
        return
    n = 1 + int(rng.random() < 0.5) + int(rng.random() < 0.2 * area)
    for t0 in np.sort(rng.uniform(-0.4, 0.4, n) * s):
        x, y = river.point(float(t0))
        axis = river.tangent(float(t0)) + math.pi / 2 + rng.normal(0, 0.2)
        cross = width / max(abs(math.cos(axis - river.tangent(float(t0)) - math.pi / 2)), 0.5)
        _bridge(rng, cv, x, y, axis, cross + 2 * rng.uniform(3, 10))
    if width > 20 and rng.random() < 0.3:
        _add_ships(rng, cv, int(rng.integers(1, 3)))
    if rng.random() < 0.3:
        _add_car_lot(rng, cv)


def _scene_airfield(rng, cv: _Canvas, area: float, objects: bool) -> None:
    s = cv.size
    cv.db, cv.region[:] = _land_db(rng, s) - rng.uniform(0, 3), LAND
    runway = _random_line(rng, s, meander=0)
    t, d = runway.frame(s)
    wr = rng.uniform(10, 26)
    side = 1 if rng.random() < 0.5 else -1
    off, wt = side * (wr / 2 + rng.uniform(15, 40)), rng.uniform(5, 10)
    _stripe(cv, d, 0.0, wr / 2, rng.uniform(-27, -22), PAVED, edge_db=rng.uniform(0, 6))
    _stripe(cv, d, off, wt / 2, rng.uniform(-26, -21), PAVED)
    depth, t0 = rng.uniform(30, 70), rng.uniform(-0.5, 0.2) * s
    tlen = rng.uniform(60, 200)
    near = off + side * (wt / 2 + 2)
    apron = (side * (d - near) >= 0) & (side * (d - near) <= depth) & (t >= t0) & (t <= t0 + tlen)
    cv.db = np.where(apron, rng.uniform(-25, -20) + 0.05 * cv.db, cv.db).astype(np.float32)
    cv.region[apron] = PAVED
    if rng.random() < 0.5:  # hangars behind the apron: bright unlabelled blocks
        for k in range(int(rng.integers(1, 4))):
            hx, hy = runway.point(t0 + (k + 0.5) * tlen / 3, near + side * (depth + 10))
            hs = rng.uniform(5, 12)
            cv.edit_db(hx, hy, runway.angle, hs * 1.5, lambda u, v, hs=hs: 10.0 * _box(u, v, hs, hs * 0.7))
    if not objects:
        return
    nose_to_taxiway = runway.angle - side * math.pi / 2
    tpos = t0 + rng.uniform(5, 20)
    if rng.random() < 0.15:  # close-up of one large aircraft
        x, y = rng.uniform(0.3, 0.7, 2) * s
        _aircraft(rng, cv, float(x), float(y), rng.uniform(0, 2 * math.pi), rng.uniform(0.35, 0.6) * s)
    for _ in range(max(1, _n(rng, 3.0, area))):
        length = math.exp(rng.uniform(math.log(min(14.0, 0.3 * s)), math.log(min(110.0, 0.45 * s))))
        if rng.random() < 0.75:  # parked in a row on the apron
            tpos += length * 0.6
            x, y = runway.point(tpos, near + side * (length / 2 + rng.uniform(2, 6)))
            theta = nose_to_taxiway + rng.normal(0, 0.1)
            tpos += length * 0.6 + rng.uniform(2, 10)
        else:  # taxiing or on the runway, aligned with it
            x, y = runway.point(rng.uniform(-0.4, 0.4) * s, float(rng.choice([0.0, off])))
            theta = runway.angle + (math.pi if rng.random() < 0.5 else 0.0)
        _aircraft(rng, cv, x, y, theta, length)
    if rng.random() < 0.3:
        for _ in range(int(rng.integers(1, 4))):
            pos = cv.sample(rng, (PAVED,))
            if pos is not None:
                _car(rng, cv, pos[0], pos[1], rng.uniform(0, math.pi))


def _scene_rural(rng, cv: _Canvas, area: float, objects: bool) -> None:
    s = cv.size
    cv.db, cv.region[:] = _land_db(rng, s), LAND
    if rng.random() < 0.5:
        _urban_patches(rng, cv, rng.uniform(0.05, 0.3))
    roads = [_random_line(rng, s, meander=rng.uniform(0, 0.05 * s)) for _ in range(int(rng.integers(0, 3)))]
    for road in roads:
        _, d = road.frame(s)
        _stripe(cv, d, 0.0, rng.uniform(1.0, 2.0), rng.uniform(-24, -19), PAVED)
    if not objects:
        return
    for _ in range(1 + int(rng.random() < 0.5 * area)):
        if rng.random() < 0.5:
            _add_tank_farm(rng, cv)
        else:
            _add_car_lot(rng, cv)
    for road in roads:
        if rng.random() < 0.5:
            _add_cars_on_road(rng, cv, road, int(rng.integers(1, 6)))


def _scene_urban(rng, cv: _Canvas, area: float, objects: bool) -> None:
    s = cv.size
    cv.db, cv.region[:] = _urban_db(rng, s), URBAN
    roads = [_random_line(rng, s, meander=0) for _ in range(int(rng.integers(1, 4)))]
    for road in roads:
        _, d = road.frame(s)
        _stripe(cv, d, 0.0, rng.uniform(1.5, 3.0), rng.uniform(-22, -17), PAVED)
    if not objects:
        return
    for road in roads:
        _add_cars_on_road(rng, cv, road, int(rng.integers(0, 5)))
    if rng.random() < 0.6:
        _add_car_lot(rng, cv)
    if rng.random() < 0.25:  # industrial tank farm
        _add_tank_farm(rng, cv)


_SCENE_FNS = {
    "sea": _scene_sea, "coast": _scene_coast, "river": _scene_river,
    "airfield": _scene_airfield, "rural": _scene_rural, "urban": _scene_urban,
}


def native_side(size: int, zoom: float = 1.0) -> int:
    """Side of the native scene rendered for a ``size`` chip at ``zoom``: ``ceil(size / zoom)``.

    Raises ``ConfigError`` for a zoom that is not a finite number >= 1 or that leaves under
    ``MIN_NATIVE`` native pixels.
    """
    if isinstance(zoom, bool) or not isinstance(zoom, numbers.Real) or not math.isfinite(zoom) or zoom < 1:
        raise ConfigError(f"--zoom={zoom!r}: the zoom must be a finite number >= 1 (1 = native scale)")
    n = math.ceil(size / zoom)
    if n < MIN_NATIVE:
        raise ConfigError(f"--zoom={zoom!r}: a {size}-px chip would show only {n} native pixels; "
                          f"use a zoom <= {size / MIN_NATIVE:g} for this size")
    return n


@lru_cache(maxsize=8)
def _bilinear_taps(n: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of a bilinear n -> size resize, pixel centres aligned
    (``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``)."""
    src = np.maximum((np.arange(size) + 0.5) * (n / size) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.intp), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a square float32 image to (size, size)."""
    i0, i1, w = _bilinear_taps(image.shape[0], size)
    rows = image[i0] * (1 - w)[:, None] + image[i1] * w[:, None]
    return rows[:, i0] * (1 - w)[None, :] + rows[:, i1] * w[None, :]


def _scale_box(box: Box, size: int, n: int) -> FloatBox:
    """A native box scaled by ``size / n``, each value correctly rounded, nudged to stay inside the image."""
    x, y, w, h = box
    fx, fy, fw, fh = x * size / n, y * size / n, w * size / n, h * size / n
    while fx + fw > size:
        fw = math.nextafter(fw, 0.0)
    while fy + fh > size:
        fh = math.nextafter(fh, 0.0)
    return fx, fy, fw, fh


def generate_image(
    rng: np.random.Generator, size: int = 256, zoom: float = 1.0,
) -> tuple[np.ndarray, list[tuple[int, Box | FloatBox]]]:
    """Render one synthetic SAR chip.

    Returns ``(image uint8 (size, size), [(category_id 0..5, (x, y, w, h)), ...])``; boxes lie inside the
    image; about 7 % of the images have no object (more at a high zoom, whose native scene is small).
    At zoom 1 (more exactly, whenever the native side ``ceil(size / zoom)`` equals ``size``) nothing is
    resized and boxes are integer pixels with ``w, h >= 2``; otherwise the native scene is resized up and
    boxes are floats, the native ones times ``size / native_side(size, zoom)``. The random draws depend on
    the native side only, so ``(rng, size=64)`` and ``(same rng, size=128, zoom=2)`` show the same scene.
    """
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"synthetic image size {size}: use {MIN_SIZE}..{MAX_SIZE} pixels")
    size = int(size)
    s = native_side(size, zoom)
    cv = _Canvas(s, res=float(rng.uniform(0.8, 1.6)), db=np.zeros((s, s), np.float32),
                 region=np.zeros((s, s), np.uint8))
    scene = SCENES[int(rng.choice(len(SCENES), p=SCENE_PROBS))]
    objects = rng.random() >= EMPTY_SCENE_PROB
    _SCENE_FNS[scene](rng, cv, (s / 256) ** 2, objects)
    for _ in range(int(rng.poisson(2.0 * (s / 256) ** 2))):
        x, y = rng.uniform(0, s, 2)
        cv.spike(float(x), float(y), float(_lin(rng.uniform(-8, 5))))

    looks = int(rng.integers(1, 5))
    clutter = _lin(cv.db.astype(np.float32)) + np.float32(_lin(rng.uniform(-30, -25)))
    speckle = rng.standard_gamma(looks, (s, s), dtype=np.float32) * np.float32(1.0 / looks)
    intensity = (clutter + cv.bodies) * speckle + cv.points
    if s != size:  # magnify the final intensity, as a detector resizes a chip: speckle becomes correlated
        intensity = _resize(intensity, size)
    gain, lo, hi = rng.uniform(-3, 3), rng.uniform(-31, -25), rng.uniform(4, 12)
    db = 10.0 * np.log10(np.maximum(intensity, 1e-12)) + np.float32(gain - lo)
    image = np.clip(db * np.float32(255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)
    if s == size:
        return image, list(cv.labels)
    return image, [(cat, _scale_box(box, size, s)) for cat, box in cv.labels]


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The independent random stream of image ``index`` of ``split``."""
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


def file_number(split: str, index: int) -> int:
    """Image id and 7-digit file number of image ``index`` of ``split``."""
    return SPLIT_OFFSETS[split] + index + 1


# ------------------------------------------------------------------------------------------ writer
@dataclass
class SynthSummary:
    """What :func:`write_dataset` did; ``str()`` is the CLI's one-paragraph report."""

    root: Path
    params: dict
    images: dict[str, int]
    instances: dict[str, int]
    per_category: dict[str, int]
    seconds: float = 0.0
    reused: bool = False

    def __str__(self) -> str:
        p = self.params
        parts = [f"{k} {self.images[k]} images" + (f" / {self.instances[k]} objects" if k != "unlabeled" else "")
                 for k in SPLITS if self.images.get(k)]
        cats = ", ".join(f"{k} {v}" for k, v in self.per_category.items())
        zoom = f", zoom {p['zoom']:g}" if p.get("zoom", 1.0) != 1.0 else ""
        head = (f"synthetic SAR dataset at {self.root} ({p['size']}x{p['size']}{zoom}, seed {p['seed']}): "
                + ("; ".join(parts) or "no images"))
        if self.reused:
            return head + f"\nobjects per category: {cats}\nalready up to date ({MANIFEST} matches); nothing written"
        total = sum(self.images.values())
        rate = total / self.seconds if self.seconds > 0 else float("inf")
        return head + f"\nobjects per category: {cats}\nwrote {total} images in {self.seconds:.1f} s ({rate:.0f}/s)"


def _check_params(params: dict) -> None:
    for key in SPLITS:
        n = params[key]
        if not isinstance(n, int) or not 0 <= n <= MAX_PER_SPLIT:
            raise ConfigError(f"--{key}={n!r}: the number of images must be 0..{MAX_PER_SPLIT}")
    if not isinstance(params["size"], int) or not MIN_SIZE <= params["size"] <= MAX_SIZE:
        raise ConfigError(f"--size={params['size']!r}: use {MIN_SIZE}..{MAX_SIZE} pixels")
    if not isinstance(params["seed"], int) or params["seed"] < 0:
        raise ConfigError(f"--seed={params['seed']!r}: the seed must be a non-negative integer")
    native_side(params["size"], params["zoom"])  # raises ConfigError for a bad zoom


def _read_manifest(out: Path) -> dict | None:
    try:
        data = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _files_present(out: Path, params: dict) -> bool:
    for split in SPLITS:
        folder = out / "Unlabeled" if split == "unlabeled" else out / "JPEGImages" / split
        if params[split] and not folder.is_dir():
            return False
        if params[split] and sum(1 for e in os.scandir(folder) if e.name.endswith(".png")) != params[split]:
            return False
        if split != "unlabeled" and not (out / "Annotations" / f"{split}.json").is_file():
            return False
    return True


def write_dataset(
    out: str | Path, train: int = 400, val: int = 100, test: int = 100, unlabeled: int = 1000,
    size: int = 256, seed: int = 0, progress: bool | None = None, zoom: float = 1.0,
) -> SynthSummary:
    """Write the synthetic benchmark to ``out`` in the SARDet-100K layout.

    ``out/Annotations/{train,val,test}.json``, ``out/JPEGImages/{split}/NNNNNNN.png`` (8-bit grayscale),
    ``out/Unlabeled/NNNNNNN.png`` and ``out/synth.json`` (parameters + counts). A folder that already holds
    exactly this generation is kept as it is; any other non-empty folder is refused (``DataError``).
    ``progress`` None shows a tqdm bar for runs of 500+ images. ``zoom`` (>= 1) magnifies the scene as a
    detector's resize would (see the module docstring); it is part of the parameters that identify a
    generation, and boxes of zoomed chips are fractional.
    """
    out = Path(out)
    params = {"train": train, "val": val, "test": test, "unlabeled": unlabeled, "size": size, "seed": seed,
              "zoom": zoom}
    _check_params(params)
    params["zoom"] = float(zoom)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another output folder")
    manifest = _read_manifest(out) if out.is_dir() else None
    if out.is_dir() and any(out.iterdir()):
        same = manifest is not None and manifest.get("version") == GENERATOR_VERSION \
            and manifest.get("params") == params
        if not same:
            what = (f"a synthetic dataset of generator version {manifest.get('version')} with "
                    f"{manifest.get('params')}" if manifest else "other files")
            raise DataError(f"{out}: folder is not empty (it holds {what}); choose an empty folder, delete it, "
                            "or repeat the exact same generation")
        if manifest.get("complete") and _files_present(out, params):
            st = manifest.get("stats", {})
            return SynthSummary(out, params, st.get("images", {}), st.get("instances", {}),
                                st.get("per_category", {}), reused=True)

    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / MANIFEST, {"generator": "sarmae.data.synth", "version": GENERATOR_VERSION,
                                       "params": params, "complete": False}, compact=True)
    total = sum(params[k] for k in SPLITS)
    from tqdm import tqdm

    bar = tqdm(total=total, desc="synth", unit="img", disable=(total < 500) if progress is None else not progress)
    start = time.perf_counter()
    images: dict[str, int] = {}
    instances: dict[str, int] = {}
    per_cat: Counter[int] = Counter()
    categories = [{"id": i, "name": name} for i, name in enumerate(SARDET_CLASSES)]
    try:
        for split in SPLITS:
            folder = out / "Unlabeled" if split == "unlabeled" else out / "JPEGImages" / split
            folder.mkdir(parents=True, exist_ok=True)
            coco_images, coco_anns = [], []
            for i in range(params[split]):
                image, labels = generate_image(image_rng(seed, split, i), size, zoom)
                number = file_number(split, i)
                name = f"{number:07d}.png"
                with writing(folder / name):
                    Image.fromarray(image).save(folder / name, compress_level=6)
                bar.update(1)
                if split == "unlabeled":
                    continue
                coco_images.append({"file_name": name, "height": size, "width": size, "id": number})
                for cat, (x, y, w, h) in labels:
                    coco_anns.append({
                        "area": float(w * h), "iscrowd": 0, "image_id": number,
                        "bbox": [float(x), float(y), float(w), float(h)], "category_id": cat,
                        "id": len(coco_anns) + 1, "ignore": 0, "segmentation": [],
                    })
                    per_cat[cat] += 1
            images[split] = params[split]
            if split != "unlabeled":
                (out / "Annotations").mkdir(exist_ok=True)
                write_json_atomic(out / "Annotations" / f"{split}.json",
                                  {"images": coco_images, "annotations": coco_anns, "categories": categories},
                                  compact=True)
                instances[split] = len(coco_anns)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    per_category = {name: per_cat[i] for i, name in enumerate(SARDET_CLASSES)}
    write_json_atomic(out / MANIFEST, {
        "generator": "sarmae.data.synth", "version": GENERATOR_VERSION, "params": params, "complete": True,
        "stats": {"images": images, "instances": instances, "per_category": per_category},
    }, compact=True)
    return SynthSummary(out, params, images, instances, per_category, seconds=seconds)
