"""Reading other people's ViT / MAE weights safely, and writing ours in the reference formats.

Every file is untrusted: :func:`open_checkpoint` is the one way sarmae opens a weights file (``.safetensors``, or
``torch.load(weights_only=True)``), so a checkpoint can never run code; every reader (encoder weights, the MAE
figure, the detector loader, resuming a run) goes through it. Supported sources: the official MAE release
(``{'model': encoder}``), full MAE training checkpoints (encoder + decoder), timm ViT state dicts, our
``encoder.safetensors`` and our Lightning ``.ckpt`` files. Loading returns a :class:`LoadReport`; the caller
decides what is acceptable.
"""

from __future__ import annotations

import argparse
import math
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from sarmae.errors import CheckpointError
from sarmae.files import atomic_write
from sarmae.models.mae import DECODER_PREFIXES, MaskedAutoencoder
from sarmae.models.vit import VIT_SIZES, resize_pos_embed

StateDict = dict[str, torch.Tensor]
POS_EMBED_KEYS = ("pos_embed", "decoder_pos_embed")
# Official MAE training checkpoints pickle their argparse ``args``; allowing that one plain class is safe.
SAFE_GLOBALS = [argparse.Namespace]
VIT_FAMILIES = {192: "ViT-Ti?", 384: "ViT-S?", 768: "ViT-B?", 1024: "ViT-L?", 1280: "ViT-H?"}
RESAVE = "re-save the weights with safetensors or with torch.save of a state dict (tensors only)"
_PICKLE_PROTO = 0x80  # first byte of a pickle of protocol >= 2 (what torch's legacy format and pickle.dump write)


def open_checkpoint(
    path: str | Path,
    mmap: bool = False,
    missing: str = "check the path",
    advice: str = "use a .safetensors file or a torch state dict of tensors",
) -> object:
    """The one way to open a weights file: ``.safetensors`` -> dict of tensors; anything else ->
    ``torch.load(weights_only=True)`` (plain containers, tensors and :data:`SAFE_GLOBALS` only).

    ``mmap`` memory-maps the tensors of a zip-format torch file (a large checkpoint's optimiser state is then
    never read into RAM); legacy-format files are read normally. Every failure is one :class:`CheckpointError`
    line naming the file: missing (+ ``missing``, what to pass instead), a pickle holding Python objects
    (refused: untrusted pickles are not loaded; re-save as safetensors or a state dict), or unreadable
    (+ ``advice``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file; {missing}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - any failure of an untrusted file becomes one readable line
            raise CheckpointError(
                f"checkpoint {path}: not a readable checkpoint (damaged safetensors file: {_first_line(exc)}); "
                f"{advice}"
            ) from None
    is_zip = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
            # torch's note on a pickle protocol it did not write; the failure, if any, is reported below
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except Exception as exc:  # noqa: BLE001
        blocked = _blocked_global(exc)
        if blocked or (not is_zip and _starts_like_pickle(path)):
            what = f"a pickle holding Python objects ({blocked})" if blocked else \
                "a legacy or plain pickle that the weights-only loader cannot read"
            raise CheckpointError(
                f"checkpoint {path}: refused, it is {what}, and untrusted pickles are not loaded (they can run "
                f"code); {RESAVE}"
            ) from None
        reason = "not a torch or safetensors weights file" if isinstance(exc, pickle.UnpicklingError) else \
            _first_line(exc)
        raise CheckpointError(f"checkpoint {path}: not a readable checkpoint ({reason}); {advice}") from None


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` strings of a ``.safetensors`` file ({} for other files or a file without any)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path}: not a readable safetensors file ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def _blocked_global(exc: Exception) -> str | None:
    """``module.Name`` of the class a weights-only load refused, if that was the reason."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return found.group(1) if found else None


def _starts_like_pickle(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(1) == bytes([_PICKLE_PROTO])


def read_state_dict(path: str | Path) -> StateDict:
    """Read tensors from ``.safetensors`` / ``.pth`` / ``.pt`` / ``.ckpt`` (via :func:`open_checkpoint`),
    unwrapping common containers.

    Unwraps ``{'state_dict': ...}`` (Lightning; a ``model.`` prefix on every key is removed),
    ``{'model': ...}`` (official MAE) and a ``module.`` (DDP) prefix. Non-tensor entries are dropped.
    """
    return unwrap_state_dict(open_checkpoint(path), path)


def unwrap_state_dict(obj: object, source: str | Path) -> StateDict:
    """The tensors of an opened checkpoint (see :func:`read_state_dict`); ``source`` names it in errors."""
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {source}: holds a {type(obj).__name__}, not a dict of weights")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"checkpoint {source}: contains no tensors")
    for prefix in ("model.", "module."):
        tensors = _strip_common_prefix(tensors, prefix)
    return tensors


def _strip_common_prefix(sd: StateDict, prefix: str) -> StateDict:
    if all(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def interpolate_pos_embed(pos_embed: torch.Tensor, new_grid: int, num_extra_tokens: int = 1) -> torch.Tensor:
    """Resize a square position embedding (1, extra + G*G, C) -> (1, extra + new_grid**2, C).

    :func:`sarmae.models.vit.resize_pos_embed` (bicubic, ``align_corners=False``, as MAE fine-tuning and ViTDet
    do); extra (cls) rows are copied unchanged. Returns the input itself when the grid already matches.
    """
    grid_tokens = pos_embed.shape[1] - num_extra_tokens
    old_grid = math.isqrt(max(grid_tokens, 0))
    if old_grid * old_grid != grid_tokens:
        raise CheckpointError(
            f"pos_embed has {pos_embed.shape[1]} tokens, not {num_extra_tokens} + a square grid; "
            "is this a ViT checkpoint?"
        )
    return resize_pos_embed(pos_embed, (new_grid, new_grid), (old_grid, old_grid), num_extra_tokens)


@dataclass
class LoadReport:
    """What happened to each key: copied, absent from the checkpoint, not in the model, wrong shape."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors"]
        for name in ("missing", "unexpected", "mismatched"):
            keys = getattr(self, name)
            if keys:
                shown = ", ".join(keys[:6]) + (f", ... (+{len(keys) - 6})" if len(keys) > 6 else "")
                parts.append(f"{name} {len(keys)} ({shown})")
        return "; ".join(parts + self.notes)

    def __str__(self) -> str:
        return self.summary()


def load_encoder_weights(module: nn.Module, state_dict_or_path: StateDict | str | Path, prefix: str = "") -> LoadReport:
    """Copy ViT encoder tensors (MAE/timm names) into ``module`` (our MAE, or the ViTDet backbone's ViT).

    ``prefix`` selects and strips a key prefix in the checkpoint (e.g. ``backbone.vit.`` of a detector);
    when empty and the checkpoint has no top-level ``patch_embed``, the prefix is found automatically.
    Decoder keys and classifier heads (``head.*``, ``fc_norm.*``) are reported as unexpected; module keys
    the checkpoint lacks (e.g. ViTDet's rel-pos tables) as missing. ``pos_embed`` is resized to the
    module's grid. Raises CheckpointError when the architecture clearly differs (embed dim, depth, patch).
    """
    source, sd = _as_state_dict(state_dict_or_path)
    prefix = prefix or find_encoder_prefix(sd)
    sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    target = {k: v for k, v in module.state_dict().items() if not k.startswith(DECODER_PREFIXES)}
    _check_encoder_architecture(source, sd, target)
    return _load(module, sd, target)


def load_reference_mae(path: str | Path, mae: MaskedAutoencoder) -> LoadReport:
    """Load a full MAE checkpoint (reference layout, encoder + decoder) into ``mae``."""
    source, sd = _as_state_dict(path)
    target = mae.state_dict()
    _check_encoder_architecture(source, sd, target)
    key = "decoder_embed.weight"
    if key in sd and sd[key].shape != target[key].shape:
        raise CheckpointError(
            f"checkpoint {source}: {key} is {tuple(sd[key].shape)}, model has {tuple(target[key].shape)}; "
            "set model.decoder_embed_dim to match"
        )
    return _load(mae, sd, target)


def save_encoder_safetensors(mae: MaskedAutoencoder, path: str | Path) -> Path:
    """Write the encoder (timm / MAE names) as safetensors, atomically (tmp file + rename)."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in mae.encoder_state_dict().items()}
    meta = {
        "format": "pt",
        "sarmae": "mae-encoder",
        "embed_dim": str(mae.embed_dim),
        "img_size": str(mae.img_size),
        "patch_size": str(mae.patch_size),
    }
    return atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def save_reference_mae(mae: MaskedAutoencoder, path: str | Path) -> Path:
    """Write the full MAE as ``{'model': state_dict}`` with reference key names (like main_pretrain.py)."""
    sd = {k: v.detach().cpu() for k, v in mae.state_dict().items()}
    return atomic_write(Path(path), lambda tmp: torch.save({"model": sd}, tmp))


# -- helpers -----------------------------------------------------------------------------------------


def _as_state_dict(obj: StateDict | str | Path) -> tuple[str, StateDict]:
    if isinstance(obj, (str, Path)):
        return str(obj), read_state_dict(obj)
    return "state dict", dict(obj)


def find_encoder_prefix(sd: StateDict) -> str:
    """'' for top-level ViT keys, else the shortest prefix in front of ``patch_embed.proj.weight``."""
    anchor = "patch_embed.proj.weight"
    found = sorted((k[: -len(anchor)] for k in sd if k.endswith(anchor)), key=len)
    return found[0] if found and found[0].endswith(".") else ""


def _size_hint(dim: int) -> tuple[str, str]:
    """(family guess, config advice) for an embed dim, e.g. 1024 -> ('ViT-L?', 'pick model.size=large')."""
    family = VIT_FAMILIES.get(dim, "unknown ViT")
    names = [name for name, cfg in VIT_SIZES.items() if cfg["embed_dim"] == dim]
    advice = f"pick model.size={names[0]}" if names else f"set model.embed_dim={dim} with its depth/num_heads"
    return family, advice


def _check_encoder_architecture(source: str, sd: StateDict, target: StateDict) -> None:
    if not any(k in sd for k in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight")):
        raise CheckpointError(
            f"checkpoint {source}: no ViT encoder weights found (no patch_embed.proj.weight or blocks.0.*); "
            "expected an MAE, timm ViT or sarmae checkpoint"
        )
    if "patch_embed.proj.weight" in sd and "patch_embed.proj.weight" in target:
        got, want = sd["patch_embed.proj.weight"].shape, target["patch_embed.proj.weight"].shape
        if got[0] != want[0]:
            family, advice = _size_hint(got[0])
            raise CheckpointError(
                f"checkpoint {source}: embed dim {got[0]} ({family}), model has {want[0]}; "
                f"{advice} or use another checkpoint"
            )
        if got != want:
            raise CheckpointError(
                f"checkpoint {source}: patch embedding {tuple(got)} != model {tuple(want)}; "
                f"set model.patch_size={got[-1]} and use {got[1]}-channel images"
            )
    depth_ckpt, depth_model = vit_depth(sd), vit_depth(target)
    if depth_ckpt != depth_model:
        raise CheckpointError(
            f"checkpoint {source}: {depth_ckpt} transformer blocks, model has {depth_model}; "
            "pick the matching model.size (or model.depth)"
        )


def vit_depth(sd: StateDict) -> int:
    """Number of ViT blocks in a state dict (from the ``blocks.N.`` keys)."""
    ids = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    return max(ids) + 1 if ids else 0


def _fit_pos_embed(ckpt: torch.Tensor, want: torch.Tensor) -> tuple[torch.Tensor, str | None]:
    """Adapt a (1, extra + G*G, C) pos embed to the module's token count; returns a note if changed."""
    if ckpt.shape == want.shape or ckpt.dim() != 3 or ckpt.shape[-1] != want.shape[-1]:
        return ckpt, None
    g_old, g_new = math.isqrt(ckpt.shape[1]), math.isqrt(want.shape[1])
    extra_old, extra_new = ckpt.shape[1] - g_old**2, want.shape[1] - g_new**2
    if extra_old not in (0, 1) or extra_new not in (0, 1):
        return ckpt, None
    out = interpolate_pos_embed(ckpt, g_new, num_extra_tokens=extra_old)[:, extra_old:]
    if extra_new:  # keep the checkpoint's cls row, or a zero row like MAE's sin-cos table
        cls = ckpt[:, :1] if extra_old else torch.zeros_like(ckpt[:, :1])
        out = torch.cat([cls, out], dim=1)
    return out, f"resized {g_old}x{g_old}->{g_new}x{g_new}"


def _load(module: nn.Module, sd: StateDict, target: StateDict) -> LoadReport:
    """Copy the keys of ``sd`` that exist in ``target`` with the same shape; report the rest."""
    report = LoadReport()
    to_load: StateDict = {}
    for key, value in sd.items():
        if key not in target:
            report.unexpected.append(key)
            continue
        if key in POS_EMBED_KEYS:
            value, note = _fit_pos_embed(value, target[key])
            if note:
                report.notes.append(f"{key} {note}")
        if value.shape != target[key].shape:
            report.mismatched.append(key)
            report.notes.append(f"{key} is {tuple(value.shape)} in the checkpoint, {tuple(target[key].shape)} here")
            continue
        to_load[key] = value
    module.load_state_dict(to_load, strict=False)
    report.loaded = list(to_load)
    report.missing = [k for k in target if k not in sd]
    return report


