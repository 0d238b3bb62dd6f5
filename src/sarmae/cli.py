"""The ``sarmae`` command line: one entry point, one subcommand per pipeline stage.

Heavy imports (torch, Lightning) happen inside each command so ``sarmae --help`` stays instant.
"""

from __future__ import annotations

import argparse
import difflib
import glob
import re
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sarmae import __version__
from sarmae.errors import ConfigError, SarmaeError, Stopped, raise_stopped
from sarmae.files import disk_full_error

if TYPE_CHECKING:
    from sarmae.data.io import IntensityScaling

TRAIN_EPILOG = (
    "Overrides are dotted key=value pairs parsed as YAML, e.g. epochs=10 batch_size=64 "
    "data.images=/sar/archive out=runs/pretrain/mine. The effective config is saved in the run folder."
)
OPTIONS_EPILOG = (
    "Every option also reads as name=value (- or _ alike; true/false for switches, [a,b] for lists), e.g. "
    "out=DIR for --out DIR."
)


def _done(path: Path | str) -> None:
    """The last line of a command that writes something: where it went."""
    print(f"results in {path}")


def run_name(checkpoint: str | Path) -> str:
    """``runs/finetune/NAME/weights/best.ckpt`` -> NAME; any other file -> its stem."""
    path = Path(checkpoint)
    return path.parent.parent.name if path.parent.name == "weights" and path.parent.parent.name else path.stem


def default_out(command: str, name: str) -> Path:
    """Where a command writes when no ``--out`` / ``out=`` is given: ``runs/<command>/<name>``."""
    return Path("runs") / command / (name or command)


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from sarmae.data.synth import write_dataset

    summary = write_dataset(
        Path(args.out),
        train=args.train,
        val=args.val,
        test=args.test,
        unlabeled=args.unlabeled,
        size=args.size,
        seed=args.seed,
        zoom=args.zoom,
    )
    print(summary)
    _done(args.out)
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from sarmae.data.check import check_dataset

    report = check_dataset(Path(args.root), splits=args.splits)
    print(report.format())
    return 0 if report.ok else 1


def _cmd_data_convert(args: argparse.Namespace) -> int:
    from sarmae.data.convert import convert_dataset

    report = convert_dataset(Path(args.src), Path(args.out), fmt=args.fmt, classes=args.classes, split=args.split,
                             copy=args.copy, difficult=args.difficult)
    print(report.format())
    _done(args.out)
    return 0


def _cmd_data_pack(args: argparse.Namespace) -> int:
    from sarmae.data.shards import pack_images

    report = pack_images(args.sources, args.out, max_size=args.max_size, chunk_bytes=args.chunk_bytes,
                         scaling=parse_scaling(args.scaling))
    print(report.summary())
    print(f"then: sarmae pretrain CONFIG data.shards={args.out}")
    _done(args.out)
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from sarmae.config import load_config
    from sarmae.train.pretrain import run_pretrain
    from sarmae.train.runs import _global_rank

    run_dir = run_pretrain(load_config(args.config, args.overrides))
    if _global_rank() == 0:
        _done(run_dir)
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from sarmae.config import load_config
    from sarmae.train.finetune import run_finetune

    run_finetune(load_config(args.config, args.overrides))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from sarmae.infer.evaluate import evaluate_checkpoint

    evaluate_checkpoint(
        Path(args.checkpoint),
        data_root=Path(args.data),
        split=args.split,
        out=Path(args.out) if args.out else None,
        max_dets=args.max_dets,
        batch_size=args.batch_size,
        device=args.device,
    )
    return 0


def parse_scaling(text: str | None) -> IntensityScaling | None:
    """``--scaling``: a mode name or a YAML mapping; validated by :class:`sarmae.data.io.IntensityScaling`."""
    if text is None:
        return None
    import yaml

    from sarmae.data.io import IntensityScaling
    from sarmae.errors import ConfigError

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"--scaling {text!r}: not a mode name or a YAML mapping like '{{mode: db}}'") from None
    if not isinstance(value, (str, dict)):
        raise ConfigError(f"--scaling {text!r}: use a mode (percentile, linear, db) or a mapping like '{{mode: db}}'")
    return IntensityScaling.from_config(value)


def _cmd_predict(args: argparse.Namespace) -> int:
    from sarmae.infer.predict import predict

    predict(
        Path(args.checkpoint),
        args.inputs,
        out=Path(args.out) if args.out else default_out("predict", run_name(args.checkpoint)),
        score_threshold=args.score_threshold,
        device=args.device,
        batch_size=args.batch_size,
        sliced=args.sliced,
        tile_size=args.tile_size,
        overlap=args.overlap,
        merge=args.merge,
        merge_iou=args.merge_iou,
        full_image_pass=args.full_image_pass,
        scaling=parse_scaling(args.scaling),
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from sarmae.infer.export import export_detector

    report = export_detector(Path(args.checkpoint), args.format, Path(args.out) if args.out else None, args.int8,
                             args.calib, args.calib_count)
    print(report.summary())
    return 0


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from sarmae.infer.reconstruct import reconstruct

    out = Path(args.out) if args.out else default_out("reconstruct", run_name(args.checkpoint)) / "reconstruction.png"
    reconstruct(Path(args.checkpoint), args.inputs, out=out, seed=args.seed)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from sarmae.experiments.demo import run_demo

    run_demo(Path(args.out), seeds=args.seeds, imagenet_weights=args.imagenet_weights, overrides=args.overrides,
             profile=args.profile)
    _done(args.out)
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from sarmae.experiments.probe import run_probe

    out = Path(args.out) if args.out else default_out("probe", Path(args.data).resolve().name)
    run_probe(args.encoders, Path(args.data), out, include_random=not args.no_random, seed=args.seed)
    print(f"wrote {out / 'probe.md'}, {out / 'probe.json'}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from sarmae.experiments.reproduce import run_reproduce

    run_reproduce(
        Path(args.data), out=Path(args.out), gpus=args.gpus, imagenet_weights=args.imagenet_weights,
        overrides=args.overrides, pretrain_config=args.pretrain_config, finetune_config=args.finetune_config,
        plan_only=args.plan_only,
    )
    _done(Path(args.out) / "plan.txt" if args.plan_only else args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sarmae",
        description="SAR object detection with MAE self-supervised pre-training "
        "(MAE pre-training -> ViTDet fine-tuning -> COCO evaluation).",
    )
    parser.add_argument("--version", action="version", version=f"sarmae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = sub.choices  # type: ignore[attr-defined]  # for parse_args: name -> sub-command parser

    data = sub.add_parser("data", help="make or validate datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    data.commands = data_sub.choices  # type: ignore[attr-defined]
    synth = data_sub.add_parser(
        "synth",
        help="write the embedded synthetic SAR detection benchmark (SARDet-100K layout)",
        description="Write the embedded synthetic SAR detection benchmark (ships, aircraft, cars, oil-tank "
        "farms, bridges, harbors over sea, coast, river, airfield, rural and urban scenes) in the SARDet-100K "
        "layout. The same seed and parameters give byte-identical files; a folder that already holds the same "
        "generation is kept.",
    )
    synth.add_argument("out", help="output dataset root")
    synth.add_argument("--train", type=int, default=400, help="labeled training images")
    synth.add_argument("--val", type=int, default=100, help="labeled validation images")
    synth.add_argument("--test", type=int, default=100, help="labeled test images")
    synth.add_argument("--unlabeled", type=int, default=1000, help="unlabeled images for pre-training")
    synth.add_argument("--size", type=int, default=256, help="image side in pixels")
    synth.add_argument("--seed", type=int, default=0, help="random seed (same seed, same dataset)")
    synth.add_argument(
        "--zoom",
        type=float,
        default=1.0,
        help="magnification >= 1 (default 1): each chip shows a native scene of ceil(size/zoom) px resized up "
        "bilinearly, so objects span zoom times more pixels and the speckle is correlated, like SARDet-100K "
        "chips resized to a detector's 800x800 input (~1.6-3.6x); boxes are scaled exactly (fractional)",
    )
    synth.set_defaults(func=_cmd_data_synth)
    check = data_sub.add_parser("check", help="validate a COCO / SARDet-100K dataset and print a report")
    check.add_argument("root", help="dataset root holding Annotations/ and JPEGImages/")
    check.add_argument("--splits", nargs="*", default=None, help="splits to check (default: all found)")
    check.set_defaults(func=_cmd_data_check)
    conv = data_sub.add_parser(
        "convert",
        help="convert VOC XML / YOLO txt / DOTA polygons / COCO json into the SARDet-100K layout",
        description="Write OUT/Annotations/<split>.json (COCO, 0-based category ids) and OUT/JPEGImages/<split>/ "
        "(images hard-linked, else symlinked, or copied; renamed 0000001.ext, numbers continuing after those in OUT) "
        "plus OUT/convert_report.json. voc: Annotations/*.xml + JPEGImages/ (or images next to the xml; "
        "ImageSets/Main/<split>.txt restricts the ids); yolo: images/ + labels/ (or images/<split>/ + labels/<split>/, "
        "or one flat folder) with normalised 'cls cx cy w h', names from data.yaml / classes.txt or --classes; "
        "dota: images/ + labelTxt/ (or annfiles/), polygons -> enclosing boxes; coco: a json (SRC, "
        "SRC/Annotations/<split>.json or the only *.json in SRC) + its images. Boxes are clipped to the image, empty "
        "ones dropped; every dropped box is counted with its reason. Nothing is written when a label file is bad.",
        epilog="Then run: sarmae data check OUT",
    )
    conv.add_argument("src", help="source dataset folder (coco: the json file or its folder)")
    conv.add_argument("out", help="output dataset root (other splits already there are kept)")
    conv.add_argument("--from", dest="fmt", required=True, metavar="{voc,yolo,dota,coco}", help="source format")
    conv.add_argument("--classes", default=None, metavar="NAMES",
                      help="'sardet' (ship,aircraft,car,tank,bridge,harbor) or 'a,b,c': class order = ids 0..; "
                      "'ship=vessel+boat' also maps those source names to ship. Names match case-insensitively, "
                      "other names are dropped and counted. Default: YOLO/COCO keep their own order, VOC/DOTA the "
                      "names found, sorted")
    conv.add_argument("--split", default="train", help="split name: Annotations/<split>.json (default: train)")
    conv.add_argument("--copy", action="store_true", help="copy the images instead of hard-linking them")
    conv.add_argument("--difficult", default="ignore", choices=["ignore", "keep", "drop"],
                      help="VOC/DOTA difficult objects: ignore (default; written with ignore=1 and iscrowd=1, so "
                      "neither training nor COCO scoring counts them), keep (ordinary boxes) or drop")
    conv.set_defaults(func=_cmd_data_convert)
    pack = data_sub.add_parser(
        "pack",
        help="decode pre-training images once into LitData shards for `sarmae pretrain data.shards=OUT`",
        description="Decode every image of SRC (folders, COCO jsons or files, in this order) once and store its "
        "pixels as uint8 (grey stays one band; 16-bit / float images are intensity-scaled first), the longest side "
        "capped at --max-size, in LitData shards (OUT/index.json + chunk-*.bin) that stream from a local folder or "
        "object storage with DDP-aware sharding. Unreadable images are skipped and listed in OUT/pack_info.json.",
    )
    pack.add_argument("sources", nargs="+", metavar="SRC", help="image folder, COCO json or image file")
    pack.add_argument("out", help="output folder (must not exist yet; upload it to object storage as it is)")
    pack.add_argument("--max-size", type=int, default=512,
                      help="cap on the stored longest side in px (default 512 = 2x the paper's 256-px input)")
    pack.add_argument("--chunk-bytes", default="64MB", help="chunk size (default 64MB)")
    pack.add_argument("--scaling", default=None, help="16-bit / float images: percentile | linear | db or a YAML "
                      "mapping like '{mode: db, low: 1, high: 99}' (default percentile 2-98, as data.scaling)")
    pack.set_defaults(func=_cmd_data_pack)

    for name, func, text in (
        ("pretrain", _cmd_pretrain, "MAE self-supervised pre-training of a ViT on SAR images"),
        ("finetune", _cmd_finetune, "ViTDet (ViT + Simple FPN + Faster R-CNN) fine-tuning"),
    ):
        cmd = sub.add_parser(name, help=text, description=text, epilog=TRAIN_EPILOG)
        cmd.add_argument("config", help="YAML config: a path or a name of a shipped config (e.g. mae_tiny)")
        cmd.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
        cmd.set_defaults(func=func)

    ev = sub.add_parser("evaluate", help="COCO bbox metrics of a detector checkpoint on a dataset split")
    ev.add_argument("checkpoint", help="detector checkpoint (weights/best.ckpt of a finetune run) or exported model")
    ev.add_argument("--data", required=True, help="dataset root")
    ev.add_argument("--split", default="val", help="split name (Annotations/<split>.json)")
    ev.add_argument("--out", default=None,
                    help="folder for metrics.json and results.json (default: runs/evaluate/<run name>_<split>)")
    ev.add_argument("--max-dets", type=int, default=100, help="detections per image kept and scored")
    ev.add_argument("--batch-size", type=int, default=4)
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ev.set_defaults(func=_cmd_evaluate)

    pr = sub.add_parser("predict", help="run a detector on images, folders or globs")
    pr.add_argument("checkpoint", help="detector checkpoint, or a model made by sarmae export (.onnx, .xml)")
    pr.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    pr.add_argument("--out", default=None,
                    help="output folder (predictions.json + rendered images; default: runs/predict/<run name>)")
    pr.add_argument("--score-threshold", type=float, default=0.3, help="minimum score drawn and saved")
    pr.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    pr.add_argument("--batch-size", type=int, default=4, help="images (or scene tiles) per forward pass")
    pr.add_argument("--scaling", default=None,
                    help="intensity scaling for 16-bit/float data: a mode (percentile, linear, db) or a YAML "
                         "mapping such as '{mode: db, vmin: -25, vmax: 0, nodata: 0}' (default: the checkpoint's)")
    sl = pr.add_argument_group("large scenes (sliced inference)")
    sl.add_argument("--sliced", choices=["auto", "always", "never"], default="auto",
                    help="auto: tiles for inputs over 1.5 tile sizes or georeferenced rasters")
    sl.add_argument("--tile-size", type=int, default=None, help="tile side in px (default: the model's img_size)")
    sl.add_argument("--overlap", type=float, default=0.2, help="tile overlap as a fraction of the tile")
    sl.add_argument("--merge", choices=["nms", "greedy"], default="nms", help="how boxes from overlapping tiles merge")
    sl.add_argument("--merge-iou", type=float, default=0.5, help="IoU threshold of the merge")
    sl.add_argument("--full-image-pass", action="store_true",
                    help="also run the whole scene shrunk to one tile, for objects larger than the overlap")
    pr.set_defaults(func=_cmd_predict)

    ex = sub.add_parser(
        "export", help="the detector as an ONNX / OpenVINO model (optionally INT8) for predict, evaluate, the API",
        description="Export a fine-tuned detector, image to boxes, scores and labels, with its class names, input "
        "size, scaling and thresholds in the file's metadata. `sarmae predict MODEL.onnx|MODEL.xml`, `sarmae "
        "evaluate` and Detector.load(...) run it with ONNX Runtime / OpenVINO (pip install 'sarmae[deploy]').",
    )
    ex.add_argument("checkpoint", help="detector checkpoint (weights/best.ckpt or last.ckpt of sarmae finetune)")
    ex.add_argument("--format", default="onnx", choices=["onnx", "openvino"], help="model format (default onnx)")
    ex.add_argument("--int8", action="store_true", help="post-training INT8 quantisation, calibrated on --calib")
    ex.add_argument("--calib", nargs="+", default=None, metavar="IMAGES",
                    help="calibration images (files, folders or globs; a few dozen of your own chips)")
    ex.add_argument("--calib-count", type=int, default=32, help="calibration images used at most (default 32)")
    ex.add_argument("--out", default=None, help="model file (default: beside the checkpoint, .onnx / .xml)")
    ex.set_defaults(func=_cmd_export)

    rc = sub.add_parser("reconstruct", help="MAE reconstruction figure (original | masked | reconstruction)")
    rc.add_argument("checkpoint", help="MAE checkpoint (weights/last.ckpt of a pretrain run)")
    rc.add_argument("inputs", nargs="+", help="image files or folders")
    rc.add_argument("--out", default=None,
                    help="output PNG file (default: runs/reconstruct/<run name>/reconstruction.png)")
    rc.add_argument("--seed", type=int, default=0, help="seed of the random mask")
    rc.set_defaults(func=_cmd_reconstruct)
    dm = sub.add_parser(
        "demo",
        help="the paper's Table 1 in miniature on the embedded synthetic SAR benchmark (CPU, ~15 min)",
        description="Generate the synthetic benchmark (cached), fine-tune ViTDet from scratch and from the tiny MAE "
        "encoders shipped with sarmae (pre-trained once on the demo's natural-image and SAR pools) with one recipe "
        "and several seeds, evaluate, probe the encoders, and print the tables with paired differences and 95 %% "
        "intervals. encoders=pretrain makes the encoders in the run (200 MAE epochs: ~50-75 more minutes on 2 cores); "
        "rows=[natural,sar_pixels,sar_gradients] adds the SAR gradient-target row. Sizes and epochs live in the "
        "shipped demo/ configs.",
    )
    dm.add_argument("--out", default="runs/demo", help="run folder (re-running resumes where it stopped)")
    dm.add_argument("--seeds", type=int, default=None,
                    help="fine-tuning seeds per row (default: the profile's, 3; 5-10 narrow the intervals); "
                    "mean +- std and paired differences")
    dm.add_argument("--profile", choices=["cpu", "gpu"], default="cpu",
                    help="cpu: tiny ViT at 128 px, ~15 min on 2 cores; gpu: ViT-S at 256 px, ~15 min on one GPU")
    dm.add_argument("--imagenet-weights", default=None, help="an ImageNet MAE/timm checkpoint of the demo's ViT size")
    dm.add_argument("overrides", nargs="*", metavar="key=value", help="demo/demo.yaml overrides")
    dm.set_defaults(func=_cmd_demo)

    pb = sub.add_parser(
        "probe",
        help="linear probes on frozen encoder features (class presence, patch objectness, within-patch localisation)",
        description="One protocol for every encoder, a randomly initialised encoder of the same size as a row: "
        "probes fit on the train split, scored on val. Writes probe.md and probe.json.",
    )
    pb.add_argument("encoders", nargs="+", metavar="ENCODER_OR_RUN",
                    help="encoder.safetensors / MAE .pth / timm file, or a pretrain run folder")
    pb.add_argument("--data", required=True, help="COCO / SARDet-100K root with train and val splits")
    pb.add_argument("--out", default=None,
                    help="output folder (probe.md, probe.json; default: runs/probe/<data root name>)")
    pb.add_argument("--seed", type=int, default=0, help="seed of the random-init row and of the probes")
    pb.add_argument("--no-random", action="store_true", help="leave out the random-init row")
    pb.set_defaults(func=_cmd_probe)

    rp = sub.add_parser(
        "reproduce",
        help="the paper's full Table 1 on SARDet-100K: MAE pre-training, three fine-tuning rows, the table",
        description="Print the plan (with GPU-hours measured from a short warm-up), then run every step. "
        "Running it again resumes where it stopped.",
    )
    rp.add_argument("--data", required=True, help="SARDet-100K root (Annotations/, JPEGImages/)")
    rp.add_argument("--gpus", type=int, default=1, help="GPUs per training run (DDP)")
    rp.add_argument("--imagenet-weights", default=None, help="official MAE ImageNet checkpoint for the ImageNet row")
    rp.add_argument("--out", default="runs/reproduce", help="run folder")
    rp.add_argument("--pretrain-config", default="mae_vitb16_sardet100k")
    rp.add_argument("--finetune-config", default="vitdet_b_sardet100k")
    rp.add_argument("--plan-only", action="store_true", help="print the plan and the estimate, run nothing")
    rp.add_argument("overrides", nargs="*", metavar="key=value", help="pretrain.KEY=V / finetune.KEY=V overrides")
    rp.set_defaults(func=_cmd_reproduce)
    for command in [*sub.choices.values(), *data_sub.choices.values()]:
        if command is not data and _options(command):  # pretrain and finetune have no options, only key=value
            command.epilog = f"{command.epilog} {OPTIONS_EPILOG}" if command.epilog else OPTIONS_EPILOG
    return parser


# -- one grammar: every option also reads as name=value -----------------------------------------------------------
NAME_VALUE = re.compile(r"([A-Za-z][A-Za-z0-9_-]*)=(.*)", re.DOTALL)


def _find_command(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.ArgumentParser | None, str, int]:
    """The sub-command parser ``argv`` selects (``data synth`` is two levels), its name and where its arguments
    start; ``None`` when argv names none (``--help``, ``--version``, a typo: argparse answers those)."""
    current, names, i = parser, [], 0
    while i < len(argv) and getattr(current, "commands", None):
        if argv[i].startswith("-"):
            i += 1
            continue
        if argv[i] not in current.commands:
            return None, "", 0
        current = current.commands[argv[i]]
        names.append(argv[i])
        i += 1
    return (current, " ".join(names), i) if names else (None, "", 0)


def _options(command: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``--max-dets`` -> ``max_dets``: the name=value spellings of a sub-command's options, and of its
    single-value positionals (``data synth out=DIR``) unless its key=value tokens are config overrides."""
    actions = command._actions  # argparse keeps no public list of a parser's actions
    names = {flag[2:].replace("-", "_"): action for action in actions for flag in action.option_strings
             if flag.startswith("--") and action.dest not in ("help", "version")}
    if not _takes_overrides(command):
        names.update({action.dest: action for action in actions if not action.option_strings and action.nargs is None})
    return names


def _takes_overrides(command: argparse.ArgumentParser) -> bool:
    """pretrain, finetune, demo and reproduce hand other key=value tokens to their configs."""
    return any(action.dest == "overrides" and not action.option_strings for action in command._actions)


def _is_path(token: str) -> bool:
    return Path(token).exists() or bool(glob.glob(token))


def _convert(action: argparse.Action, text: str, where: str) -> Any:
    """``text`` read as the flag would read it (its type and choices)."""
    try:
        value = action.type(text) if callable(action.type) else text
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        kind = {int: "a whole number", float: "a number"}.get(action.type, "a valid value")
        raise ConfigError(f"{where}: expected {kind}") from None
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where}: use one of {', '.join(map(str, action.choices))}")
    return value


def option_value(action: argparse.Action, token: str) -> Any:
    """The value ``name=value`` sets: YAML decides switches (true/false), lists ([a,b]) and null (the option's
    default when that is None); anything else is the text itself, converted like the flag's argument, so a path
    or split name such as ``2017`` or ``yes`` stays text."""
    from sarmae.config import parse_override

    key, value = parse_override(token)
    raw = token.split("=", 1)[1]
    where = f"{key}={raw}"
    if action.nargs == 0:  # a switch: store_true / store_false
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: a switch takes true or false")
        return action.const if value else action.default
    if action.nargs in ("*", "+"):
        items = value if isinstance(value, list) else ([raw] if raw else [])
        if action.nargs == "+" and not items:
            raise ConfigError(f"{where}: needs at least one value")
        return [_convert(action, str(item), where) for item in items]
    if value is None and action.default is None and not action.required:
        return None
    if raw == "":
        raise ConfigError(f"{where}: needs a value")
    return _convert(action, raw, where)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """argparse, plus ``name=value`` for every ``--name`` option of the chosen sub-command (``-`` and ``_`` alike)
    and for its single-value positionals (``data synth out=DIR``).

    A token is a name=value when it looks like one and is not an existing path or a glob that matches; a name that
    is no option is a one-line :class:`ConfigError` with the closest option, except for the commands whose key=value
    tokens are config overrides (pretrain, finetune, demo, reproduce), which keep it. Given both ways, the
    name=value wins. A required option or positional (``evaluate --data``) may be given either way.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    command, name, start = _find_command(parser, argv)
    if command is None:
        return parser.parse_args(argv)
    options, keeps = _options(command), _takes_overrides(command)
    keep, given = argv[:start], []
    tokens = argv[start:]
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token == "--":
            keep += tokens[i - 1:]
            break
        if token.startswith("-"):
            keep.append(token)
            flag = command._option_string_actions.get(token)
            if flag is not None:  # the flag's own value is never a name=value, whatever it looks like
                count = 1 if flag.nargs is None else flag.nargs if isinstance(flag.nargs, int) else 0
                keep += tokens[i:i + count]
                i += count
            continue
        match = NAME_VALUE.fullmatch(token)
        if match is None or _is_path(token):
            keep.append(token)
            continue
        key = match.group(1).replace("-", "_")
        if key in options:
            given.append((options[key], token))
        elif keeps:
            keep.append(token)
        else:
            close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
            hint = (f"did you mean {close[0]}=?" if close else
                    f"options: {', '.join(f'{o}=' for o in options)}" if options else "it takes no options")
            raise ConfigError(f"{match.group(1)}=: unknown option of 'sarmae {name}' (and no such file); {hint}")
    values = [(action, option_value(action, token)) for action, token in given]
    for action, _ in values:
        action.required = False
        if not action.option_strings:  # a positional given by name: the others fill the remaining slots
            action.nargs, action.default = "?", None
    args = parser.parse_args(keep)
    for action, value in values:
        setattr(args, action.dest, value)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one command. SIGTERM unwinds like Ctrl-C (training writes a checkpoint first, workers are stopped);
    the exit status is then 128 + the signal's number (130 Ctrl-C, 143 SIGTERM), as a shell reports it."""
    previous = signal.signal(signal.SIGTERM, raise_stopped) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        args = parse_args(argv)
        return args.func(args)
    except SarmaeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk outside the atomic writers (images, figures, tables): still one line
        full = disk_full_error(exc, exc.filename, atomic=False)
        if full is None:
            raise
        print(f"error: {full}", file=sys.stderr)
        return 2
    except Stopped as stop:
        print(stop.message or f"stopped by {signal.Signals(stop.signum).name} (checkpoints are kept: run the same "
              "command again to resume where it stopped)", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print("interrupted (checkpoints are kept: run the same command again to resume where it stopped)",
              file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
