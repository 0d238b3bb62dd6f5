"""Table 1 runs shared by ``sarmae demo`` and ``sarmae reproduce``: one fine-tuning run per (row, seed),
each evaluated on the val split from its *last* checkpoint (no model selection on val), then the table.

Every step is resumable: a finished step leaves a marker file (``encoder.safetensors`` for pre-training,
``eval/metrics.json`` for a row) and is skipped when run again; an interrupted step continues from its
``weights/last.ckpt`` (``resume=auto``).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from sarmae.config import load_config, set_dotted
from sarmae.infer.metrics import TABLE_COLUMNS, format_table, markdown_table


@dataclass(frozen=True)
class Row:
    """One Table 1 row: its label (``Pre-train data``), ``init`` mode, weights file and run-folder tag."""

    label: str
    init: str
    weights: Path | None = None
    name: str | None = None  # run folders are finetune_<tag>_seed<N>; default: the init mode

    @property
    def tag(self) -> str:
        return self.name or self.init


def run_pretrain_step(config: str, overrides: list[str], out: Path) -> Path:
    """MAE pre-training into ``out`` unless already finished; returns ``out/encoder.safetensors``."""
    encoder = out / "encoder.safetensors"
    if encoder.is_file():
        print(f"pre-training: done earlier ({encoder})")
        return encoder
    from sarmae.train.pretrain import run_pretrain

    cfg = load_config(config, overrides)
    set_dotted(cfg, "out", str(out))
    set_dotted(cfg, "resume", "auto")
    run_pretrain(cfg)
    return encoder


def row_marker(out: Path) -> Path:
    """The file a finished row leaves (its evaluation), so that re-running skips it."""
    return out / "eval" / "metrics.json"


def run_row(row: Row, seed: int, config: str, overrides: list[str], data_root: Path, out: Path) -> dict:
    """Fine-tune one row with one seed into ``out`` and evaluate its last checkpoint on val."""
    marker = row_marker(out)
    if marker.is_file():
        print(f"{row.label} (seed {seed}): done earlier ({marker})")
        return json.loads(marker.read_text())
    from sarmae.infer.evaluate import evaluate_checkpoint
    from sarmae.train.finetune import finetune_config, run_finetune

    cfg = load_config(config, overrides)
    for key, value in (("out", str(out)), ("resume", "auto"), ("seed", seed), ("init", row.init),
                       ("weights", str(row.weights) if row.weights else None), ("data.root", str(data_root))):
        set_dotted(cfg, key, value)
    cfg = finetune_config(cfg)
    run_finetune(cfg)
    split = cfg["data"]["val_split"]
    return evaluate_checkpoint(out / "weights" / "last.ckpt", data_root=data_root, split=split, out=out / "eval")


def summarise(per_row: dict[str, list[dict]]) -> dict[str, dict]:
    """Per row: each Table 1 column as a float (one seed) or a (mean, std) pair (several seeds)."""
    table: dict[str, dict] = {}
    for label, runs in per_row.items():
        table[label] = {}
        for column in TABLE_COLUMNS:
            values = [float(r[column]) for r in runs if r.get(column) is not None and not math.isnan(float(r[column]))]
            if not values:
                table[label][column] = float("nan")
            elif len(values) == 1:
                table[label][column] = values[0]
            else:
                table[label][column] = (statistics.mean(values), statistics.stdev(values))
    return table


PAIRED_COLUMNS = ("mAP", "AP50")


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """The ``level`` confidence interval of the mean of ``values`` (Student's t over n - 1 degrees of freedom);
    None for fewer than two values. With 3 seeds the half-width is 2.48 x the std (t = 4.30 / sqrt(3))."""
    if len(values) < 2:
        return None
    from scipy.stats import t

    mean = statistics.mean(values)
    half = float(t.ppf(0.5 + level / 2, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


def paired_differences(per_row: dict[str, list[dict]], row: str, reference: str) -> dict[str, dict]:
    """Per column: ``row - reference`` for each seed (runs are listed by seed), their mean, std, 95 % t-interval
    and how many seeds put ``row`` ahead.

    Pairing by seed removes what a seed does to every row alike (data order, head initialisation); the interval
    says whether the mean difference is more than that seed-to-seed spread.
    """
    out: dict[str, dict] = {}
    for column in PAIRED_COLUMNS:
        diffs = [float(r[column]) - float(b[column]) for r, b in zip(per_row[row], per_row[reference])
                 if r.get(column) is not None and b.get(column) is not None]
        diffs = [d for d in diffs if not math.isnan(d)]
        out[column] = {
            "per_seed": diffs,
            "mean": statistics.mean(diffs) if diffs else None,
            "std": statistics.stdev(diffs) if len(diffs) > 1 else None,
            "ci95": t_interval(diffs),
            "ahead": sum(d > 0 for d in diffs),
        }
    return out


def format_paired(comparisons: dict[tuple[str, str], dict[str, dict]], column: str) -> str:
    """Markdown: one line per (row, reference) pair: the per-seed differences, mean, 95 % interval, seeds ahead."""
    seeds = max((len(p[column]["per_seed"]) for p in comparisons.values()), default=0)
    header = [f"Δ {column} (points)", *(f"seed {i}" for i in range(seeds)), "mean", "95 % CI", "seeds ahead"]
    body = []
    for (row, reference), p in comparisons.items():
        d = p[column]
        ci = f"[{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]" if d["ci95"] else "n/a"
        mean = f"{100 * d['mean']:+.1f}" if d["mean"] is not None else "n/a"
        cells = [f"{100 * v:+.1f}" for v in d["per_seed"]] + [""] * (seeds - len(d["per_seed"]))
        body.append([f"{row} − {reference}", *cells, mean, ci, f"{d['ahead']}/{len(d['per_seed'])}"])
    return markdown_table(header, body)


def write_table(per_row: dict[str, list[dict]], out: Path, title: str,
                comparisons: list[tuple[str, str]] = ()) -> str:
    """Print and save the table as ``table.md`` and ``table.json`` (per-seed values included).

    ``comparisons`` are (row, reference) label pairs, e.g. (SAR row, scratch): their paired per-seed differences
    follow the table, and the row's JSON entry gains ``paired[reference]``. Pairs naming a missing row are skipped.
    """
    table = summarise(per_row)
    text = format_table(table)
    paired = {(row, ref): paired_differences(per_row, row, ref) for row, ref in comparisons
              if row in per_row and ref in per_row}
    if paired:
        text += ("\n\nPaired differences, row − reference run of the same seed (points; 95 % CI: Student's t over "
                 "seeds):\n\n" + "\n\n".join(format_paired(paired, column) for column in PAIRED_COLUMNS))
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(f"# {title}\n\n{text}\n")

    def clean(value):
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, tuple):
            return {"mean": value[0], "std": value[1]}
        return value

    payload = {
        label: {"summary": {k: clean(v) for k, v in table[label].items()},
                "runs": [{k: clean(r.get(k)) for k in TABLE_COLUMNS} for r in runs]}
        for label, runs in per_row.items()
    }
    for (row, reference), p in paired.items():
        payload[row].setdefault("paired", {})[reference] = p
    (out / "table.json").write_text(json.dumps(payload, indent=2))
    print(f"\n{title}\n{text}\n(saved {out / 'table.md'} and {out / 'table.json'})")
    return text
