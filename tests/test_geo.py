"""Georeferenced outputs: GeoJSON in WGS84 from affine (EPSG:4326, UTM) and GCP rasters, CSV, COCO, preview."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS

from sarmae.data.scene import open_scene
from sarmae.infer.geo import write_outputs
from sarmae.infer.sliced import Detections

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

NAMES = ["ship", "aircraft", "car", "tank", "bridge", "harbor"]
LABEL_TO_CAT = {k: 10 + k for k in range(1, 7)}
BOXES = np.array([[10.0, 20.0, 60.5, 45.25], [100.0, 0.0, 127.0, 30.0], [0.5, 90.0, 20.0, 127.5]])
DETS = Detections(BOXES, np.array([0.9, 0.8, 0.7], np.float32), np.array([1, 3, 6], np.int64))


def write_tif(path, crs=None, transform=None, gcps=None, size=(128, 128)):
    pixels = np.random.default_rng(0).integers(1, 255, size, dtype=np.uint8)[None]
    profile = {"driver": "GTiff", "width": size[1], "height": size[0], "count": 1, "dtype": "uint8"}
    if transform is not None:
        profile.update(crs=crs, transform=transform)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
        if gcps is not None:
            dst.gcps = (gcps, crs)
    return path


def utm_to_lonlat(easting: float, northing: float, zone: int) -> tuple[float, float]:
    """Inverse transverse Mercator on WGS84 (Krueger series, northern hemisphere), independent of GDAL/PROJ;
    the 3-term series is accurate to well below a millimetre inside a UTM zone."""
    a, f, k0 = 6378137.0, 1 / 298.257223563, 0.9996
    n = f / (2 - f)
    big_a = a / (1 + n) * (1 + n**2 / 4 + n**4 / 64)
    beta = (n / 2 - 2 * n**2 / 3 + 37 * n**3 / 96, n**2 / 48 + n**3 / 15, 17 * n**3 / 480)
    delta = (2 * n - 2 * n**2 / 3 - 2 * n**3, 7 * n**2 / 3 - 8 * n**3 / 5, 56 * n**3 / 15)
    xi = northing / (k0 * big_a)
    eta = (easting - 500000.0) / (k0 * big_a)
    xi_p = xi - sum(b * math.sin(2 * j * xi) * math.cosh(2 * j * eta) for j, b in enumerate(beta, 1))
    eta_p = eta - sum(b * math.cos(2 * j * xi) * math.sinh(2 * j * eta) for j, b in enumerate(beta, 1))
    chi = math.asin(math.sin(xi_p) / math.cosh(eta_p))
    lat = chi + sum(d * math.sin(2 * j * chi) for j, d in enumerate(delta, 1))
    lon0 = math.radians(zone * 6 - 183)
    return math.degrees(lon0 + math.atan2(math.sinh(eta_p), math.cos(xi_p))), math.degrees(lat)


def _ring_area(ring) -> float:
    pts = np.asarray(ring[:-1])
    return 0.5 * float(np.sum(pts[:, 0] * np.roll(pts[:, 1], -1) - np.roll(pts[:, 0], -1) * pts[:, 1]))


def _corners(box):
    x1, y1, x2, y2 = box
    return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]


def _check_geojson(path, to_lonlat, tol=1e-6):
    """Every ring is closed, counter-clockwise, [lon, lat], and its corners match ``to_lonlat`` within tol."""
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == len(BOXES)
    for feature, box, label in zip(data["features"], BOXES, DETS.labels):
        props = feature["properties"]
        assert props["category_id"] == LABEL_TO_CAT[int(label)] and props["category_name"] == NAMES[label - 1]
        assert props["bbox_px"] == pytest.approx(box.tolist(), abs=0.01)
        ring = feature["geometry"]["coordinates"][0]
        assert feature["geometry"]["type"] == "Polygon" and len(ring) == 5 and ring[0] == ring[-1]
        assert _ring_area(ring) > 0  # counter-clockwise exterior
        expected = [to_lonlat(x, y) for x, y in _corners(box)]
        for want in expected:  # each corner present (the ring may start anywhere / be reversed)
            assert min(abs(p[0] - want[0]) + abs(p[1] - want[1]) for p in ring) < tol


@pytest.mark.parametrize("south_up", [False, True])
def test_geographic_affine_gives_exact_lon_lat(tmp_path, south_up):
    # A 1e-4 degree grid at 12.3 E / 45.6 N; south_up flips the row axis, which flips the ring orientation.
    transform = Affine(1e-4, 0, 12.3, 0, 1e-4 if south_up else -1e-4, 45.6)
    path = write_tif(tmp_path / "geo.tif", CRS.from_epsg(4326), transform)
    with open_scene(path) as scene:
        assert scene.georef.kind == "affine"
        outputs = write_outputs(scene, DETS, tmp_path / "out", NAMES, LABEL_TO_CAT)
    sign = 1 if south_up else -1
    _check_geojson(outputs["geojson"], lambda x, y: (12.3 + 1e-4 * x, 45.6 + sign * 1e-4 * y), tol=1e-9)
    rows = list(csv.DictReader(open(outputs["csv"])))
    assert [float(r["lon"]) for r in rows] == pytest.approx(12.3 + 1e-4 * (BOXES[:, 0] + BOXES[:, 2]) / 2, abs=1e-8)
    assert [float(r["lat"]) for r in rows] == pytest.approx(45.6 + sign * 1e-4 * (BOXES[:, 1] + BOXES[:, 3]) / 2,
                                                             abs=1e-8)
    assert [r["category_name"] for r in rows] == ["ship", "car", "harbor"]


def test_utm_affine_is_reprojected_to_wgs84(tmp_path):
    # 10 m pixels in UTM 33N, 40 km east of the central meridian (15 E) at about 45 N.
    e0, n0 = 540000.0, 4985000.0
    path = write_tif(tmp_path / "utm.tif", CRS.from_epsg(32633), Affine(10.0, 0, e0, 0, -10.0, n0))
    with open_scene(path) as scene:
        outputs = write_outputs(scene, DETS, tmp_path / "out", NAMES, LABEL_TO_CAT)
    _check_geojson(outputs["geojson"], lambda x, y: utm_to_lonlat(e0 + 10 * x, n0 - 10 * y, 33))
    lon, lat = utm_to_lonlat(e0, n0, 33)
    assert 15.4 < lon < 15.6 and 44.9 < lat < 45.1  # sanity of the reference formula itself


def test_gcp_georeferenced_scene(tmp_path):
    """GCPs taken from a known (rotated) affine in EPSG:4326: the GCP transformer must reproduce the affine."""
    def truth(x, y):
        return 9.0 + 8e-5 * x + 2e-5 * y, 54.0 + 1.5e-5 * x - 9e-5 * y

    gcps = [GroundControlPoint(row=r, col=c, x=truth(c, r)[0], y=truth(c, r)[1])
            for r in (0, 60, 128) for c in (0, 70, 128)]
    path = write_tif(tmp_path / "gcp.tif", CRS.from_epsg(4326), gcps=gcps)
    with open_scene(path) as scene:
        assert scene.georef.kind == "gcps" and scene.georef.ok
        outputs = write_outputs(scene, DETS, tmp_path / "out", NAMES, LABEL_TO_CAT)
    _check_geojson(outputs["geojson"], truth)


def test_plain_image_gets_pixel_geojson_and_a_warning(tmp_path, write_image):
    path = write_image(tmp_path / "plain.png", np.full((128, 128), 80, np.uint8))
    with open_scene(path) as scene, pytest.warns(UserWarning, match="not georeferenced"):
        outputs = write_outputs(scene, DETS, tmp_path / "out", NAMES, LABEL_TO_CAT)
    data = json.loads(outputs["geojson"].read_text())
    assert data["sarmae"]["coordinates"].startswith("pixel")
    ring = data["features"][0]["geometry"]["coordinates"][0]
    assert sorted(map(tuple, ring[:-1])) == sorted(_corners(BOXES[0])) and _ring_area(ring) > 0
    header = next(csv.reader(open(outputs["csv"])))
    assert "lon" not in header and header[:6] == ["id", "x1", "y1", "x2", "y2", "score"]
    coco = json.loads(outputs["coco"].read_text())
    assert coco[0]["bbox"] == [10.0, 20.0, 50.5, 25.25] and coco[0]["category_id"] == 11
    assert coco[0]["file_name"].endswith("plain.png")
    from PIL import Image

    with Image.open(outputs["preview"]) as preview:
        pixels = np.asarray(preview.convert("RGB"))
    assert pixels.shape == (128, 128, 3) and (pixels[20, 30] != 80).any()  # a box edge drawn on the grey scene
