"""Writing files so that nothing a user made is ever half-written: the one atomic-write rule of the project.

The new content goes to a temporary file beside the target (same file system, so the rename is atomic), is
flushed and fsynced, then ``os.replace``s the target; on any error the temporary file is removed and the old
target is untouched. Checkpoints, exported encoders, dataset jsons and manifests all go through here. A full
disk (or quota) becomes one :class:`~sarmae.errors.DiskFullError` line naming the file, the free space and the
space the write needed at least.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from sarmae.errors import DiskFullError

FULL = (errno.ENOSPC, errno.EDQUOT)
# torch.save reports a failed write as a RuntimeError of its zip writer, without the OS error's number
TORCH_WRITE_FAILED = ("unexpected pos", "file write failed")
LOW_SPACE = 64 << 20  # bytes: below this, a failed write is taken for a full disk


def _megabytes(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


def is_disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether ``exc`` (raised while writing into ``folder``) is a full disk or quota. Writers that lose the OS
    error's number (torch's zip writer, safetensors) count when their message says so or the disk is nearly full;
    call it before removing the unfinished file, whose bytes are part of the evidence."""
    if isinstance(exc, OSError) and exc.errno in FULL:
        return True
    text = str(exc)
    if "No space left on device" in text or "Disk quota exceeded" in text:
        return True
    return any(t in text for t in TORCH_WRITE_FAILED) and shutil.disk_usage(_existing(folder)).free < LOW_SPACE


def disk_full_error(exc: BaseException, path: Path | None, written: int = 0, atomic: bool = True
                    ) -> DiskFullError | None:
    """A :class:`DiskFullError` if ``exc`` is a full disk or quota while writing ``path`` (None: unknown file;
    ``written`` bytes had gone into it before it failed; ``atomic``: the previous file was not touched), else
    None."""
    path = Path(path) if path is not None else None
    folder = _existing(path.parent if path is not None else Path.cwd())
    if not is_disk_full(exc, folder):
        return None
    return _disk_full(path, folder, written, atomic)


def _disk_full(path: Path | None, folder: Path, written: int, atomic: bool) -> DiskFullError:
    free = shutil.disk_usage(folder).free
    previous = path.stat().st_size if atomic and path is not None and path.is_file() else 0
    need = ""
    if previous or written:
        need = f", it needs about {_megabytes(previous)}" if previous >= written else \
            f", it needs more than {_megabytes(written)}"
    return DiskFullError(
        f"{path or 'a file'}: no space left on the device while writing it ({_megabytes(free)} free in {folder}"
        f"{need}); " + ("the previous file is intact; " if previous else "")
        + "free some space or write elsewhere (out=...)"
    )


def _existing(folder: Path) -> Path:
    return next((p for p in [folder, *folder.parents] if p.exists()), Path.cwd())


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@contextmanager
def _replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; on success it is fsynced and replaces ``path``, on any error it
    is removed (a full disk: :class:`~sarmae.errors.DiskFullError`) and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as exc:
        full, written = is_disk_full(exc, path.parent), _size(tmp)
        tmp.unlink(missing_ok=True)  # first: the free space reported is what the user has
        if not full:
            raise
        raise _disk_full(path, _existing(path.parent), written, atomic=True) from None
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """``with atomic_open(path, "wb") as f: ...``: ``f`` writes a temporary file that replaces ``path`` on success."""
    with _replacing(path) as tmp, open(tmp, mode) as f:
        yield f


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """For writers that take a file name (safetensors): ``write(tmp)`` then ``os.replace(tmp, path)``."""
    with _replacing(path) as tmp:
        write(tmp)
    return Path(path)


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Around writes that are not atomic (generated images, figures, renders, shards): a full disk becomes one
    :class:`~sarmae.errors.DiskFullError` line naming ``path``."""
    try:
        yield
    except Exception as exc:
        full = disk_full_error(exc, Path(path), atomic=False)
        if full is None:
            raise
        raise full from None


def write_json_atomic(path: str | Path, data: Any, compact: bool = False) -> None:
    """``data`` as JSON (``compact``: no spaces, for large annotation files)."""
    with atomic_open(path, "w") as f:
        json.dump(data, f, separators=(",", ":") if compact else None)
