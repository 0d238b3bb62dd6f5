"""The natural-image pool (the demo's ImageNet stand-in): deterministic crops of the bundled photographs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sarmae.data.natural import MANIFEST, write_natural_pool
from sarmae.errors import ConfigError


def test_pool_is_deterministic_rgb_and_reused(tmp_path):
    a = write_natural_pool(tmp_path / "a", count=6, size=48, seed=3)
    b = write_natural_pool(tmp_path / "b", count=4, size=48, seed=3)
    files = sorted(a.glob("*.png"))
    assert len(files) == 6 and (a / MANIFEST).is_file()
    images = [np.asarray(Image.open(f)) for f in files]
    assert all(im.shape == (48, 48, 3) for im in images)
    assert len({im.tobytes() for im in images}) == 6  # different crops
    for name in ("0000000.png", "0000003.png"):  # a smaller pool with the same seed keeps the first images
        assert (a / name).read_bytes() == (b / name).read_bytes()
    mtime = files[0].stat().st_mtime_ns
    write_natural_pool(tmp_path / "a", count=6, size=48, seed=3)  # same parameters: reused, not rewritten
    assert files[0].stat().st_mtime_ns == mtime
    other = write_natural_pool(tmp_path / "c", count=2, size=48, seed=4)
    assert (other / "0000000.png").read_bytes() != (a / "0000000.png").read_bytes()


@pytest.mark.parametrize("count,size", [(0, 64), (3, 8), (2.5, 64)])
def test_bad_sizes_are_one_line_errors(tmp_path, count, size):
    with pytest.raises(ConfigError, match="natural images"):
        write_natural_pool(tmp_path, count=count, size=size)
