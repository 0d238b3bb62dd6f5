"""Linear probes on frozen encoder features: what does an encoder already know before fine-tuning?

One protocol for every encoder, plus a randomly initialised encoder of the same architecture ("random init")
as the floor. The encoder sees each whole chip (no masking), resized to ``img_size`` x ``img_size`` and
normalised like MAE training; features are the patch tokens after the final norm and their mean. Three
tasks are trained on the ``train`` split and scored on ``val`` of a SARDet-100K / COCO root (boxes read by
:class:`~sarmae.data.coco.CocoDetection`, so clipping, crowd and degenerate boxes are handled as in training):

1. chip-level class presence: one logistic regression per class on the mean-pooled feature; mAP over classes;
2. patch objectness: logistic regression on each patch token, positive when an object's box centre lies in
   that patch; average precision;
3. within-patch localisation: ridge regression from the token of a patch holding exactly one box centre to
   that centre's offset (dx, dy) in [0, 1] inside the patch; mean absolute error in patch units and R^2,
   next to the constant predictor (the train mean).

Features are standardised with train statistics; every fit is scikit-learn's, closed-form (ridge) or Newton's
method to convergence (logistic), with fixed L2 strengths (:data:`LOGISTIC_C`, :data:`RIDGE_L2`): no per-encoder
tuning, nothing chosen on val.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import average_precision_score, r2_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torchvision.transforms.v2 import functional as TF

from sarmae.config import load_yaml
from sarmae.data.coco import CocoDetection
from sarmae.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sarmae.errors import CheckpointError, ConfigError, DataError
from sarmae.models.checkpoints import (
    find_encoder_prefix,
    load_encoder_weights,
    read_state_dict,
    safetensors_metadata,
    vit_depth,
)
from sarmae.models.mae import MaskedAutoencoder, build_mae
from sarmae.models.vit import VIT_SIZES

# Fixed regularisation, the same for every encoder (intercepts are never penalised; features are standardised):
# logistic: 1/2 |w|^2 on the *summed* log-loss, i.e. scikit-learn's default C = 1 (l2 = 1 / N on the mean loss);
# ridge: l2 = 1 on the *mean* squared error, i.e. shrinkage on the scale of one standardised feature's variance.
# A-priori conventions, checked once by 5-fold CV on the synthetic train split with random-init ViTs (both sit in
# the flat optimum of their task); never chosen on val, never per encoder. How they map onto scikit-learn:
# LogisticRegression minimises C * sum(log-loss) + |w|^2 / 2 (intercept free with its newton-cholesky and lbfgs
# solvers), the same minimiser as sum(log-loss) + |w|^2 / (2 C): LOGISTIC_C is passed as C unchanged. Ridge
# minimises sum(|x w + b - y|^2) + alpha |w|^2 (intercept free) = N (mean squared error + alpha / N |w|^2): alpha is
# RIDGE_L2 * N, N the number of train rows of that fit.
LOGISTIC_C = 1.0
RIDGE_L2 = 1.0
# Newton's method (scikit-learn's newton-cholesky) to max |gradient of the mean loss + penalty| < NEWTON_GRAD_TOL:
# converged to ~1e-8 in the weights, so the metrics do not depend on the solver's path. lbfgs at its default
# tol = 1e-4 stops early enough to move APs in the third decimal, and at a tol that does not is ~3x slower here.
NEWTON_MAX_ITER = 50
NEWTON_GRAD_TOL = 1e-9
BATCH = 32  # images per encoder forward
RANDOM_LABEL = "random init"
BASELINE_LABEL = "chance / train mean"
ENCODER_FILE = "encoder.safetensors"

PROTOCOL = {
    "features": "frozen encoder, whole chip (no masking) resized to img_size x img_size (bilinear, antialias), "
    "[0,1] RGB normalised with the run's mean/std (ImageNet by default); patch tokens after the final norm, "
    "and their mean for chip-level tasks",
    "splits": "probes fit on train, scored on val; features standardised with train mean/std",
    "presence": "per class: chip holds >= 1 box of the class; logistic regression on the mean-pooled feature; "
    "metric mAP over classes (classes without a positive and a negative in train, or without a positive in "
    "val, are skipped and listed)",
    "objectness": "per patch token: an object's box centre lies in the patch; logistic regression; metric AP",
    "localisation": "patches holding exactly one box centre: ridge regression to the centre's (dx, dy) in [0, 1] "
    "inside the patch; metrics MAE in patch units (mean over dx and dy) and R^2 (mean over dx and dy) on val, "
    "with the constant predictor (train mean) as baseline",
    "solver": f"scikit-learn; logistic: LogisticRegression(solver='newton-cholesky', max_iter={NEWTON_MAX_ITER}, "
    f"tol={NEWTON_GRAD_TOL:g}), scored by its decision function; ridge: Ridge (closed form) with alpha = ridge_l2 * "
    "n_train; features z-scored by StandardScaler fit on train; float64",
    "logistic_C": LOGISTIC_C,
    "ridge_l2": RIDGE_L2,
    "regularisation": "logistic: sum of log-losses + |w|^2 / (2 C) (scikit-learn's C); ridge: mean squared error "
    "+ ridge_l2 |w|^2; intercepts free; the same for every encoder, not tuned on val",
    "random_init": "same architecture, MAE reference init (sin-cos positions, xavier), torch seed = seed",
    "chance": "presence: mean val prevalence of the scored classes; objectness: val positive rate "
    "(expected AP of a random ranking); localisation: train-mean predictor",
}


# -- encoders ----------------------------------------------------------------------------------------


@dataclass
class ProbeEncoder:
    """A frozen encoder ready for :func:`encode`, with where it came from."""

    label: str
    source: str
    model: MaskedAutoencoder
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    notes: list[str] = field(default_factory=list)

    @property
    def arch(self) -> dict:
        return architecture(self.model)


def architecture(model: MaskedAutoencoder) -> dict:
    """What decides the features' shape: sizes, patch and input size."""
    block = model.blocks[0]
    return {
        "embed_dim": model.embed_dim,
        "depth": len(model.blocks),
        "num_heads": block.attn.num_heads,
        "mlp_ratio": block.mlp.fc1.out_features / model.embed_dim,
        "patch_size": model.patch_size,
        "img_size": model.img_size,
    }


def _encoder_model(embed_dim: int, depth: int, num_heads: int, mlp_ratio: float, patch: int, img_size: int
                   ) -> MaskedAutoencoder:
    """An MAE with this encoder and a minimal decoder (never used)."""
    if img_size % patch:
        raise ConfigError(f"img_size={img_size} is not a multiple of the encoder's patch size {patch}")
    return MaskedAutoencoder(img_size=img_size, patch_size=patch, embed_dim=embed_dim, depth=depth,
                             num_heads=num_heads, mlp_ratio=mlp_ratio, decoder_embed_dim=8, decoder_depth=0,
                             decoder_num_heads=1)


def infer_architecture(sd: dict[str, torch.Tensor], source: str, meta: dict[str, str] | None = None) -> dict:
    """Encoder sizes from tensor shapes: embed dim, channels and patch from ``patch_embed.proj.weight``, depth
    from the block ids, MLP ratio from ``blocks.0.mlp.fc1``, native input size from the ``pos_embed`` grid.
    Heads are not visible in shapes: the file's metadata, else the named size of this width, else dim / 64."""
    meta = meta or {}
    proj = sd.get("patch_embed.proj.weight")
    if proj is None or proj.dim() != 4 or proj.shape[-1] != proj.shape[-2]:
        raise CheckpointError(f"checkpoint {source}: no patch_embed.proj.weight of a ViT; expected an MAE / timm "
                              "ViT encoder, a sarmae encoder.safetensors or a pre-training run folder")
    dim, chans, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[-1])
    if chans != 3:
        raise CheckpointError(f"checkpoint {source}: a {chans}-channel patch embedding; the probe feeds 3-channel "
                              "images like pre-training")
    depth = vit_depth(sd)
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    if depth == 0 or fc1 is None:
        raise CheckpointError(f"checkpoint {source}: no transformer blocks (blocks.0.*); not a ViT encoder")
    heads = int(meta["num_heads"]) if str(meta.get("num_heads", "")).isdigit() else None
    named = [cfg for cfg in VIT_SIZES.values() if cfg["embed_dim"] == dim]
    if heads is None and named:
        heads = named[0]["num_heads"]
    if heads is None and dim % 64 == 0:
        heads = dim // 64
    if heads is None or dim % 4 or dim % heads:
        raise CheckpointError(f"checkpoint {source}: cannot tell the attention heads of a {dim}-wide ViT from its "
                              "weights; probe its pre-training run folder (config.yaml names them)")
    img_size = None
    pos = sd.get("pos_embed")
    if pos is not None and pos.dim() == 3:
        grid = math.isqrt(pos.shape[1])
        if grid * grid not in (pos.shape[1], pos.shape[1] - 1):
            grid = math.isqrt(pos.shape[1] - 1)
        if grid * grid in (pos.shape[1], pos.shape[1] - 1):
            img_size = grid * patch
    if img_size is None and str(meta.get("img_size", "")).isdigit():
        img_size = int(meta["img_size"])
    return {"embed_dim": dim, "depth": depth, "num_heads": heads, "mlp_ratio": fc1.shape[0] / dim,
            "patch_size": patch, "img_size": img_size}


def _copy_weights(model: MaskedAutoencoder, sd: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load the encoder strictly enough for a fair probe: every block / patch tensor must arrive."""
    report = load_encoder_weights(model, sd)
    if report.mismatched:
        raise CheckpointError(f"checkpoint {source}: {report.summary()}; the file does not fit its architecture")
    lost = [k for k in report.missing if k.startswith(("blocks.", "patch_embed."))]
    if lost:
        raise CheckpointError(f"checkpoint {source}: lacks {len(lost)} encoder tensors ({', '.join(lost[:4])}); "
                              "not a complete ViT encoder")
    notes = [f"{key} not in the checkpoint (kept at init)" for key in report.missing]
    return notes + [n for n in report.notes if n]


def load_probe_encoder(path: str | Path, img_size: int | None = None) -> ProbeEncoder:
    """An encoder file (``encoder.safetensors``, official-MAE ``.pth``, timm state dict, ``.ckpt``) or a
    pre-training run folder (its ``config.yaml`` and ``encoder.safetensors``), frozen, in eval mode."""
    path = Path(path)
    if path.is_dir():
        weights = path / ENCODER_FILE
        if not weights.is_file():
            raise CheckpointError(
                f"{path}: no {ENCODER_FILE}; pass a finished pre-training run folder or an encoder file "
                "(an unfinished run has weights/last.ckpt: pass that file to probe its latest epoch)"
            )
        config = path / "config.yaml"
        if config.is_file():
            return _from_run(path, config, weights, img_size)
        encoder = _from_file(weights, img_size)
        encoder.notes.append("no config.yaml in the run folder: architecture read from the weights")
        return encoder
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file or folder; pass an encoder file or a pre-training run folder")
    return _from_file(path, img_size)


def _from_run(run: Path, config: Path, weights: Path, img_size: int | None) -> ProbeEncoder:
    cfg = load_yaml(config)
    model_cfg = dict(cfg.get("model") or {})
    if img_size is not None:
        model_cfg["img_size"] = int(img_size)
    try:
        model = build_mae(model_cfg)
    except ValueError as exc:
        raise CheckpointError(f"{config}: cannot build its encoder ({exc})") from None
    notes = _copy_weights(model, read_state_dict(weights), str(weights))
    data = cfg.get("data") or {}
    return ProbeEncoder(label=run.name, source=str(run), model=model.eval(),
                        mean=tuple(data.get("mean") or IMAGENET_MEAN), std=tuple(data.get("std") or IMAGENET_STD),
                        notes=notes)


def _from_file(path: Path, img_size: int | None) -> ProbeEncoder:
    sd = read_state_dict(path)
    prefix = find_encoder_prefix(sd)
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    arch = infer_architecture(sd, str(path), safetensors_metadata(path))
    size = img_size or arch["img_size"]
    if size is None:
        raise CheckpointError(f"checkpoint {path}: no pos_embed to read the input size from; pass img_size")
    model = _encoder_model(arch["embed_dim"], arch["depth"], arch["num_heads"], arch["mlp_ratio"],
                           arch["patch_size"], int(size))
    notes = _copy_weights(model, sd, str(path))
    return ProbeEncoder(label=path.stem, source=str(path), model=model.eval(), notes=notes)


def random_encoder(like: ProbeEncoder, seed: int) -> ProbeEncoder:
    """The same architecture at the MAE reference init, seeded (the global RNG is left untouched)."""
    a = like.arch
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _encoder_model(a["embed_dim"], a["depth"], a["num_heads"], a["mlp_ratio"], a["patch_size"],
                               a["img_size"])
    return ProbeEncoder(label=RANDOM_LABEL, source=RANDOM_LABEL, model=model.eval(), mean=like.mean, std=like.std)


@torch.inference_mode()
def encode(model: MaskedAutoencoder, images: torch.Tensor, mean, std, batch: int = BATCH) -> torch.Tensor:
    """(N, 3, S, S) in [0, 1] -> patch tokens after the final norm, (N, L, D) float32, row-major patches."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    out = []
    for start in range(0, images.shape[0], batch):
        x = (images[start:start + batch] - mean_t) / std_t
        x = model.patch_embed(x) + model.pos_embed[:, 1:]
        cls = (model.cls_token + model.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in model.blocks:
            x = block(x)
        out.append(model.norm(x)[:, 1:].float())
    return torch.cat(out)


# -- data ----------------------------------------------------------------------------------------------


@dataclass
class Split:
    """One split's chips resized to ``size`` and their boxes in resized pixels."""

    images: torch.Tensor  # (N, 3, S, S) float32 in [0, 1]
    boxes: list[np.ndarray]  # per image (n, 4) XYXY
    labels: list[np.ndarray]  # per image (n,) in 1..K
    class_names: tuple[str, ...]
    stats: dict


def load_split(root: Path, split: str, size: int) -> Split:
    ds = CocoDetection(root, split)
    images, boxes, labels = [], [], []
    for i in range(len(ds)):
        image, target = ds[i]
        h, w = target["orig_size"]
        images.append(TF.resize(image.as_subclass(torch.Tensor), [size, size], antialias=True))
        scale = np.array([size / w, size / h, size / w, size / h], dtype=np.float64)
        boxes.append(target["boxes"].as_subclass(torch.Tensor).numpy().astype(np.float64) * scale)
        labels.append(target["labels"].numpy())
    if not images:
        raise DataError(f"{ds.ann_file}: no images; the probe needs chips in both train and val")
    return Split(torch.stack(images), boxes, labels, ds.class_names, dict(ds.stats))


@dataclass
class Targets:
    presence: np.ndarray  # (N, K) bool
    objectness: np.ndarray  # (N * L,) bool
    loc_index: np.ndarray  # (M,) flat patch index of patches with exactly one centre
    loc_offset: np.ndarray  # (M, 2) dx, dy in [0, 1]


def targets(split: Split, patch: int) -> Targets:
    size = split.images.shape[-1]
    grid = size // patch
    k = len(split.class_names)
    n = len(split.boxes)
    presence = np.zeros((n, k), dtype=bool)
    counts = np.zeros((n, grid * grid), dtype=np.int64)
    offsets = np.zeros((n, grid * grid, 2))
    for i, (boxes, labels) in enumerate(zip(split.boxes, split.labels, strict=True)):
        presence[i, labels - 1] = True
        if not len(boxes):
            continue
        u = (boxes[:, 0] + boxes[:, 2]) / 2 / patch  # centre in patch units
        v = (boxes[:, 1] + boxes[:, 3]) / 2 / patch
        gx = np.minimum(np.floor(u), grid - 1).astype(np.int64)
        gy = np.minimum(np.floor(v), grid - 1).astype(np.int64)
        cell = gy * grid + gx
        np.add.at(counts[i], cell, 1)
        offsets[i, cell] = np.stack([u - gx, v - gy], axis=1)  # meaningful where the count is 1
    flat_counts = counts.reshape(-1)
    index = np.flatnonzero(flat_counts == 1)
    return Targets(presence, flat_counts > 0, index, offsets.reshape(-1, 2)[index])


# -- probes ------------------------------------------------------------------------------------------


def standardise(train: torch.Tensor, *others: torch.Tensor) -> list[np.ndarray]:
    """float64 copies z-scored with the train mean / std (scikit-learn's ``StandardScaler``: population std,
    constant features scaled by 1)."""
    scaler = StandardScaler().fit(np.asarray(train, dtype=np.float64))
    return [scaler.transform(np.asarray(x, dtype=np.float64)) for x in (train, *others)]


def fit_logistic(x: np.ndarray, y: np.ndarray) -> LogisticRegression:
    """sum(log-loss) + |w|^2 / (2 LOGISTIC_C), intercept free, solved to convergence (see :data:`LOGISTIC_C`)."""
    return LogisticRegression(C=LOGISTIC_C, solver="newton-cholesky", max_iter=NEWTON_MAX_ITER,
                              tol=NEWTON_GRAD_TOL).fit(x, y)


def fit_ridge(x: np.ndarray, y: np.ndarray) -> Ridge:
    """mean(|x w + b - y|^2) + RIDGE_L2 |w|^2, intercept free: scikit-learn's summed loss with alpha = RIDGE_L2 N."""
    return Ridge(alpha=RIDGE_L2 * len(x)).fit(x, y)


def _fit_threads() -> threadpool_limits:
    """scikit-learn's BLAS / OpenMP threads = torch's intra-op threads (the fits ran in torch before): one thread
    setting for the whole probe, and no thrashing where the caller asked torch for fewer threads than cores (two
    BLAS threads on a busy 2-core machine made the objectness fit ~15x slower). Entered once per probe, not per
    fit: finding the thread pools reads the process's libraries (~3 ms)."""
    return threadpool_limits(limits=torch.get_num_threads())


def r_squared(pred: np.ndarray, true: np.ndarray) -> float | None:
    """Mean over outputs of R^2 against the val mean; None (not scikit-learn's 0 or 1) when an output is constant
    on val or there are fewer than 2 rows."""
    if len(true) < 2 or (true.min(0) == true.max(0)).any():
        return None
    return float(r2_score(true, pred))


def _round(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def probe_presence(train_feat, val_feat, train_y: np.ndarray, val_y: np.ndarray, names) -> dict:
    xt, xv = standardise(train_feat, val_feat)
    per_class, skipped = {}, {}
    with _fit_threads():
        for k, name in enumerate(names):
            pos_train, pos_val = int(train_y[:, k].sum()), int(val_y[:, k].sum())
            if pos_train in (0, len(train_y)):
                skipped[name] = f"{pos_train} of {len(train_y)} train chips positive"
                continue
            if pos_val == 0:
                skipped[name] = "no positive val chip"
                continue
            model = fit_logistic(xt, train_y[:, k])
            per_class[name] = _round(average_precision_score(val_y[:, k], model.decision_function(xv)))
    scored = [names.index(n) for n in per_class]
    return {
        "mAP": _round(float(np.mean(list(per_class.values())))) if per_class else None,
        "AP_per_class": per_class,
        "skipped_classes": skipped,
        "chance": _round(float(val_y[:, scored].mean())) if scored else None,
        "n_train": len(train_y),
        "n_val": len(val_y),
    }


def probe_objectness(train_tok, val_tok, train_y: np.ndarray, val_y: np.ndarray) -> dict:
    result = {"AP": None, "chance": _round(float(val_y.mean())) if len(val_y) else None,
              "n_train": len(train_y), "n_val": len(val_y),
              "positives_train": int(train_y.sum()), "positives_val": int(val_y.sum())}
    if train_y.all() or not train_y.any() or not val_y.any():
        return result
    xt, xv = standardise(train_tok, val_tok)
    with _fit_threads():
        model = fit_logistic(xt, train_y)
        result["AP"] = _round(average_precision_score(val_y, model.decision_function(xv)))
    return result


def probe_localisation(train_tok, val_tok, train_t: np.ndarray, val_t: np.ndarray) -> dict:
    result = {"MAE": None, "R2": None, "MAE_constant": None, "R2_constant": None,
              "n_train": len(train_t), "n_val": len(val_t)}
    if len(train_t) < 2 or len(val_t) < 1:
        return result
    xt, xv = standardise(train_tok, val_tok)
    with _fit_threads():
        pred = fit_ridge(xt, train_t).predict(xv)
    const = np.broadcast_to(train_t.mean(0), val_t.shape)
    result.update(MAE=_round(float(np.abs(pred - val_t).mean())), R2=_round(r_squared(pred, val_t)),
                  MAE_constant=_round(float(np.abs(const - val_t).mean())), R2_constant=_round(r_squared(const, val_t)))
    return result


def probe_encoder(encoder: ProbeEncoder, train: Split, val: Split) -> dict:
    """All three probes for one encoder; timings in seconds."""
    patch = encoder.model.patch_size
    tic = time.perf_counter()
    tok_train = encode(encoder.model, train.images, encoder.mean, encoder.std)
    tok_val = encode(encoder.model, val.images, encoder.mean, encoder.std)
    t_feat = time.perf_counter() - tic
    y_train, y_val = targets(train, patch), targets(val, patch)
    dim = tok_train.shape[-1]
    flat_train, flat_val = tok_train.reshape(-1, dim), tok_val.reshape(-1, dim)
    row = {
        "source": encoder.source,
        "architecture": encoder.arch,
        "presence": probe_presence(tok_train.mean(1), tok_val.mean(1), y_train.presence, y_val.presence,
                                   list(train.class_names)),
        "objectness": probe_objectness(flat_train, flat_val, y_train.objectness, y_val.objectness),
        "localisation": probe_localisation(flat_train[torch.from_numpy(y_train.loc_index)],
                                           flat_val[torch.from_numpy(y_val.loc_index)],
                                           y_train.loc_offset, y_val.loc_offset),
    }
    if encoder.notes:
        row["notes"] = encoder.notes
    total = time.perf_counter() - tic
    row["seconds"] = {"features": round(t_feat, 3), "probes": round(total - t_feat, 3), "total": round(total, 3)}
    return row


# -- the command -----------------------------------------------------------------------------------------


def _labels_for(encoders: list[str | Path], labels: dict[str, str] | None, loaded: list[ProbeEncoder]) -> list[str]:
    """``labels`` (keyed by the path as given or any path to the same place), else the run folder name / file
    stem; clashing default names get their parent folder (``a/pretrain``), remaining clashes a counter."""
    given = {str(Path(k).resolve()): v for k, v in (labels or {}).items()}
    names = []
    for path, enc in zip(encoders, loaded, strict=True):
        names.append((labels or {}).get(str(path)) or given.get(str(Path(path).resolve())) or enc.label)
    defaults = [enc.label for enc in loaded]
    clashing = {name for name in names if names.count(name) > 1}
    for i, (name, path) in enumerate(zip(names, encoders, strict=True)):
        if name == defaults[i] and name in clashing:
            names[i] = f"{Path(path).resolve().parent.name}/{name}"
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 and name != RANDOM_LABEL else f"{name} #{seen[name]}")
    return out


def _arch_key(arch: dict) -> tuple:
    return tuple(sorted(arch.items()))


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def markdown_table(result: dict) -> str:
    """One row per encoder (plus chance / constant-predictor rows) and the protocol line."""
    lines = ["| encoder | presence mAP | objectness AP | localisation MAE (patches) | localisation R² |",
             "|---|---|---|---|---|"]
    for label, row in result["encoders"].items():
        p, o, loc = row["presence"], row["objectness"], row["localisation"]
        lines.append(f"| {label} | {_fmt(p['mAP'])} | {_fmt(o['AP'])} | {_fmt(loc['MAE'])} | {_fmt(loc['R2'])} |")
    for label, row in result["baselines"].items():
        lines.append(f"| *{label}* | {_fmt(row['presence'])} | {_fmt(row['objectness'])} | "
                     f"{_fmt(row['localisation_MAE'])} | {_fmt(row['localisation_R2'])} |")
    d = result["data"]
    lines += ["", f"Linear probes on frozen features: fit on {d['train_images']} train chips, scored on "
              f"{d['val_images']} val chips of {d['root']}; features standardised with train statistics; logistic "
              f"regression (presence: mean-pooled feature, per class; objectness: patch token holds a box centre) "
              f"and ridge (localisation: centre offset inside its patch); fixed L2 (logistic C = {LOGISTIC_C:g}, "
              f"ridge {RIDGE_L2:g}) for every encoder, no tuning. MAE lower is better; chance = random ranking / "
              "train-mean predictor."]
    return "\n".join(lines) + "\n"


def run_probe(
    encoders: list[str | Path],
    data_root: Path,
    out: Path | None,
    *,
    img_size: int | None = None,
    include_random: bool = True,
    seed: int = 0,
    labels: dict[str, str] | None = None,
) -> dict:
    """Probe each encoder (file or pre-training run folder) and, per architecture, a random init of it.

    Writes ``out/probe.json`` and ``out/probe.md`` when ``out`` is given, prints the markdown table and
    returns the dict written to ``probe.json``."""
    if not encoders:
        raise ConfigError("no encoder to probe: pass encoder files or pre-training run folders")
    if img_size is not None and (isinstance(img_size, bool) or int(img_size) < 1):
        raise ConfigError(f"img_size={img_size!r}: must be a whole number >= 1")
    data_root = Path(data_root)
    loaded = [load_probe_encoder(path, img_size) for path in encoders]
    for enc, name in zip(loaded, _labels_for(encoders, labels, loaded), strict=True):
        enc.label = name
    rows: list[ProbeEncoder] = []
    random_of: dict[tuple, ProbeEncoder] = {}
    for enc in loaded:
        rows.append(enc)
        if include_random and _arch_key(enc.arch) not in random_of:
            random_of[_arch_key(enc.arch)] = random_encoder(enc, seed)
    if len(random_of) > 1:
        for rnd in random_of.values():
            a = rnd.arch
            rnd.label = f"{RANDOM_LABEL} (ViT {a['embed_dim']}x{a['depth']}, p{a['patch_size']}, {a['img_size']} px)"
    rows += list(random_of.values())

    tic = time.perf_counter()
    splits: dict[int, tuple[Split, Split]] = {}
    for enc in rows:
        size = enc.model.img_size
        if size not in splits:
            splits[size] = (load_split(data_root, "train", size), load_split(data_root, "val", size))
    load_s = time.perf_counter() - tic
    train0, val0 = next(iter(splits.values()))

    table: dict[str, dict] = {}
    baselines: dict[str, dict] = {}
    geometries = {(e.model.img_size, e.model.patch_size) for e in rows}
    for enc in rows:
        train, val = splits[enc.model.img_size]
        row = probe_encoder(enc, train, val)
        table[enc.label] = row
        geometry = (enc.model.img_size, enc.model.patch_size)
        name = BASELINE_LABEL if len(geometries) == 1 else f"{BASELINE_LABEL} ({geometry[0]} px, p{geometry[1]})"
        if name not in baselines:
            loc = row["localisation"]
            baselines[name] = {"presence": row["presence"]["chance"], "objectness": row["objectness"]["chance"],
                               "localisation_MAE": loc["MAE_constant"], "localisation_R2": loc["R2_constant"]}
        print(f"probe {enc.label}: {row['seconds']['total']:.1f} s", flush=True)
    result = {
        "protocol": {**PROTOCOL, "seed": seed, "img_size": img_size or "native (pos-embed grid x patch)"},
        "data": {"root": str(data_root), "train_images": len(train0.boxes), "val_images": len(val0.boxes),
                 "classes": list(train0.class_names), "train_boxes": train0.stats.get("boxes"),
                 "val_boxes": val0.stats.get("boxes"), "load_seconds": round(load_s, 3)},
        "encoders": table,
        "baselines": baselines,
    }
    text = markdown_table(result)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "probe.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
        (out / "probe.md").write_text(text)
    print(text, end="")
    return result
