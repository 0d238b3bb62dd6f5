"""Writing files so that nothing a user made is ever half-written: the one atomic-write rule of the project.

The new content goes to a temporary file beside the target (same file system, so the rename is atomic), is
flushed and fsynced, then ``os.replace``s the target; on any error the temporary file is removed and the old
target is untouched. Checkpoints, exported encoders, dataset jsons and manifests all go through here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """``with atomic_open(path, "wb") as f: ...``: ``f`` writes a temporary file that replaces ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """For writers that take a file name (safetensors): ``write(tmp)`` then ``os.replace(tmp, path)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | Path, data: Any, compact: bool = False) -> None:
    """``data`` as JSON (``compact``: no spaces, for large annotation files)."""
    with atomic_open(path, "w") as f:
        json.dump(data, f, separators=(",", ":") if compact else None)
