"""Pre-training images packed once into LitData shards, streamed by ``sarmae pretrain data.shards=...``.

Why shards: a 512-1000 px SAR chip costs 4-10 ms to decode on one core (PNG rows, JPEG speckle), so 16 loader
cores feed ~2,000-4,000 images/s at best, below what one modern GPU's bf16 MAE consumes; and 100k small files on
network storage are slow to list and open on many nodes. ``sarmae data pack`` decodes every image once and stores
its pixels as uint8 (one band when the file is grey, or RGB with equal bands), its longest side capped at
``max_size``, in chunks of LitData's streaming format (``index.json`` + ``chunk-*.bin``), which reads from a local
folder or object storage (``s3://``, ``gs://``, ``azure://``) with DDP- and worker-aware sharding and a resumable
loader state, and is the format Lightning's own streaming library uses. A sample then costs a chunk read and a
uint8 resize.

LitData over WebDataset: WebDataset's tar shards have no random access and no loader state, so a resumed run
cannot continue exactly where it stopped; LitData's loader state travels in Lightning's checkpoint.

Pixels: 8-bit files are stored as they are (capped by a uint8 area resize when larger than ``max_size``); 16-bit /
float images go through the same :class:`~sarmae.data.io.IntensityScaling` as the folder loader and are then
quantised to 8 bits (1/255 steps, far below SAR speckle). Each item keeps the original height and width, so the
random crops are drawn in the original's pixels exactly like the folder loader's (same seed, same crops).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset
from litdata.streaming.writer import BinaryWriter
from PIL import Image

from sarmae.data.io import IntensityScaling, open_8bit, read_image
from sarmae.data.sampling import sample_seed
from sarmae.data.transforms import MAETransform
from sarmae.data.unlabeled import UnlabeledImages
from sarmae.errors import DataError, DiskFullError
from sarmae.files import writing

PACK_INFO = "pack_info.json"  # written beside LitData's index.json: what was packed, from where, what was skipped


@dataclass
class PackReport:
    out: Path
    packed: int = 0
    skipped: list[str] = field(default_factory=list)  # "path: reason"
    max_size: int = 0

    def summary(self) -> str:
        return f"packed {self.packed} images into {self.out} (max side {self.max_size} px), skipped {len(self.skipped)}"


def stored_pixels(path: str, max_size: int, scaling: IntensityScaling | None = None) -> tuple[np.ndarray, int, int]:
    """``(uint8 pixels (h, w) or (h, w, 3), original height, original width)`` of one image, as packed."""
    img = open_8bit(path) if scaling is None or scaling.nodata is None else None
    if img is not None:
        with img:
            height, width = img.height, img.width
            try:
                pil = img.copy()  # decodes
            except Exception as exc:
                raise DataError(f"{path}: cannot decode ({exc}); re-export or remove it") from None
        if pil.mode == "RGB":
            r, g, b = (np.asarray(band) for band in pil.split())
            if np.array_equal(r, g) and np.array_equal(r, b):
                pil = Image.fromarray(r)  # grey content in an RGB file: one band, expanded again by the transform
    else:
        pixels = read_image(path, scaling)  # float (H, W, 3) in [0, 1], the folder loader's own reading
        height, width = pixels.shape[:2]
        u8 = np.rint(pixels * 255.0).astype(np.uint8)
        pil = Image.fromarray(u8[..., 0] if (u8[..., 0] == u8[..., 1]).all() and (u8[..., 0] == u8[..., 2]).all()
                              else u8)
    if max(height, width) > max_size:
        factor = max_size / max(height, width)
        pil = pil.resize((max(1, round(width * factor)), max(1, round(height * factor))), Image.Resampling.BOX)
    return np.array(pil), height, width


def pack_images(
    sources: list[str | Path],
    out: str | Path,
    max_size: int = 512,
    chunk_bytes: str = "64MB",
    scaling: IntensityScaling | None = None,
) -> PackReport:
    """Pack the images of ``sources`` (folders, COCO jsons or image files, as ``data.images`` takes them) into
    LitData shards at ``out``, in the order the sources list them. Unreadable images are skipped and listed.

    The result streams with :class:`PackedImages`. ``out`` must not exist yet (nothing a user made is replaced).
    """
    if max_size < 16:
        raise DataError(f"max_size={max_size}: must be >= 16 px (2x the pre-training input size is a good choice)")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: already exists and is not empty; remove it or pack into another folder")
    paths = UnlabeledImages(sources).paths
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    report = PackReport(out=out, max_size=max_size)
    try:
        with writing(partial):  # a full disk: one line, and the unfinished shards are removed
            writer = BinaryWriter(str(partial), chunk_bytes=chunk_bytes)
            for path in paths:
                try:
                    pixels, height, width = stored_pixels(path, max_size, scaling)
                except (DataError, OSError) as exc:
                    report.skipped.append(str(exc) if str(path) in str(exc) else f"{path}: {exc}")
                    print(f"skipped {report.skipped[-1]}", file=sys.stderr)
                    continue
                writer[report.packed] = {"image": pixels, "height": height, "width": width}
                report.packed += 1
            if report.packed == 0:
                shutil.rmtree(partial, ignore_errors=True)
                raise DataError(f"no readable image in {', '.join(map(str, sources))}; nothing packed")
            writer.done()
            writer.merge()
    except DiskFullError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    info = {"images": report.packed, "max_size": max_size, "sources": [str(s) for s in sources],
            "skipped": report.skipped, "scaling": None if scaling is None else scaling.__dict__}
    (partial / PACK_INFO).write_text(json.dumps(info, indent=1))
    if out.exists():
        out.rmdir()  # empty (checked above)
    partial.rename(out)  # the folder appears whole or not at all
    return report


class PackedImages(StreamingDataset):
    """Streams packed images; item -> ``transform`` output (an :class:`MAETransform`: ``[3, size, size]``)."""

    def __init__(self, shards: str, transform: MAETransform, shuffle: bool = True, seed: int = 0) -> None:
        if "://" not in shards and not (Path(shards) / "index.json").is_file():
            raise DataError(f"data.shards={shards}: no index.json there; make shards with `sarmae data pack`")
        try:
            super().__init__(shards, shuffle=shuffle, seed=seed)
        except Exception as exc:  # LitData: a missing cloud extra, credentials, a damaged index.json...
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise DataError(f"data.shards={shards}: cannot open the shards ({reason})") from None
        self.mae_transform = transform  # (LitData's StreamingDataset has a ``transform`` of its own)

    def __next__(self) -> torch.Tensor:
        # The k-th sample of this rank (and loader worker) in this epoch draws its augmentation from its own seed,
        # as image files do (sarmae.data.sampling), not from the training's random stream. LitData counts epochs
        # from 1 and restores global_index (samples this worker streamed this epoch) with a resumed loader.
        k = self.global_index + (self.worker_env.rank << 32 if self.worker_env is not None else 0)
        rank = self.distributed_env.global_rank if self.distributed_env is not None else 0
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(self.seed, self.current_epoch - 1, rank, k))
            return super().__next__()

    def __getitem__(self, index: Any) -> torch.Tensor:
        item = super().__getitem__(index)
        img = Image.fromarray(np.ascontiguousarray(item["image"]))
        return self.mae_transform.from_8bit(img, original_size=(int(item["height"]), int(item["width"])))


def packed_images(shards: str, transform: MAETransform, shuffle: bool = True, seed: int = 0) -> Any:
    """A LitData ``StreamingDataset`` of the shards at ``shards`` (folder or object-storage URL)."""
    return PackedImages(str(shards), transform, shuffle=shuffle, seed=seed)


class EpochPositionLoader(StreamingDataLoader):
    """LitData's loader positioned by sarmae's checkpoints alone: epoch ``current_epoch`` + 1 next (LitData counts
    from 1), its first ``skip_batches`` batches dropped (a run stopped in the middle of that epoch).

    LitData's own mid-epoch state is not used: Lightning fetches one batch ahead of the step it trains, so that
    state would resume one batch late, and this LitData version restarts the epoch's stream on resume anyway.
    Skipping reads the dropped batches once (their samples' seeds and order then match an uninterrupted run).
    """

    skip_batches = 0

    def __iter__(self) -> Any:
        batches = super().__iter__()
        skip, self.skip_batches = self.skip_batches, 0
        for _ in range(skip):
            next(batches, None)
        yield from batches

    def state_dict(self) -> dict[str, Any]:
        return {}  # resumable through sarmae's checkpoint (epoch and batches trained), see the class docstring

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def streaming_loader(dataset: Any, batch_size: int, workers: int, collate_fn: Any,
                     position: tuple[int, int] = (0, 0)) -> Any:
    """LitData's loader (DDP- and worker-aware) starting at ``position`` = (epoch, batches of it trained)."""
    loader = EpochPositionLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_fn,
                                 pin_memory=torch.cuda.is_available(), drop_last=len(dataset) >= 2 * batch_size,
                                 generator=torch.Generator().manual_seed(0))  # worker seeds off the global RNG
    loader.current_epoch, loader.skip_batches = position  # each pass adds one to the epoch first
    return loader


__all__ = ["PACK_INFO", "PackReport", "PackedImages", "EpochPositionLoader", "pack_images", "packed_images",
           "stored_pixels", "streaming_loader"]
