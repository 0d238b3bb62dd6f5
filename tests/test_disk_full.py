"""A full disk while writing is one line naming the file, the free space and the space needed; the previous file
stays intact. On a real, small file system (tmpfs, mounted where the test runs as root), not a simulated error."""

from __future__ import annotations

import errno
import hashlib
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from sarmae.cli import main
from sarmae.errors import DiskFullError
from sarmae.files import atomic_open, disk_full_error

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

TINY_MAE = ["model.img_size=64", "model.embed_dim=64", "model.depth=2", "model.num_heads=2",
            "model.decoder_embed_dim=32", "model.decoder_depth=1", "model.decoder_num_heads=2", "batch_size=8",
            "data.workers=0", "figure.every=0", "trainer.precision=32-true"]


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs (skipped where mounting is not allowed)."""
    where = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` until ``leave`` bytes are free."""
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_resuming_pre_training_into_a_full_disk_is_one_line_and_keeps_the_checkpoint(small_disk, tmp_path, capsys):
    from sarmae.data.synth import write_dataset

    write_dataset(tmp_path / "ds", train=0, val=0, test=0, unlabeled=16, size=64, seed=0)
    args = ["pretrain", "mae_tiny", *TINY_MAE, f"data.images={tmp_path / 'ds' / 'Unlabeled'}"]
    assert main([*args, f"out={tmp_path / 'run'}", "epochs=1"]) == 0
    run = small_disk / "run"
    shutil.copytree(tmp_path / "run", run)
    last = run / "weights" / "last.ckpt"
    before = sha(last)
    fill(small_disk, leave=100_000)
    capsys.readouterr()
    assert main([*args, f"out={run}", "epochs=2", "resume=auto"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {last}: no space left on the device") and "the previous file is intact" in err
    assert " free in " in err and "it needs about" in err
    assert sha(last) == before  # the epoch-1 checkpoint is untouched
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_a_full_disk_outside_the_atomic_writers_is_one_line_too(small_disk, capsys):
    fill(small_disk, leave=20_000)
    assert main(["data", "synth", str(small_disk / "ds"), "--train", "4", "--val", "0", "--test", "0",
                 "--unlabeled", "40", "--size", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no space left on the device" in err and "free in" in err, err


def test_only_a_full_disk_is_reported_as_one(tmp_path):
    target = tmp_path / "x.bin"
    assert disk_full_error(OSError(errno.EACCES, "Permission denied"), target) is None
    assert disk_full_error(RuntimeError("something else"), target) is None
    full = disk_full_error(OSError(errno.ENOSPC, "No space left on device"), target, written=3 << 20)
    assert isinstance(full, DiskFullError) and "needs more than 3.0 MB" in str(full)
    with pytest.raises(ValueError), atomic_open(target, "wb") as f:  # other errors pass through unchanged
        f.write(b"x")
        raise ValueError("not a disk problem")
    assert not target.exists() and list(tmp_path.iterdir()) == []
