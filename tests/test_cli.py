"""One grammar: every option of every command also reads as ``name=value``; default output folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from sarmae.cli import main, parse_args, run_name


def ns(argv: list[str]) -> dict:
    args = vars(parse_args(argv))
    args.pop("func")
    return args


@pytest.mark.parametrize(("named", "flags"), [
    (["evaluate", "c.ckpt", "data=R", "split=test", "max_dets=50", "out=O", "batch_size=2", "device=cpu"],
     ["evaluate", "c.ckpt", "--data", "R", "--split", "test", "--max-dets", "50", "--out", "O", "--batch-size", "2",
      "--device", "cpu"]),
    (["predict", "c.ckpt", "a.png", "dir", "score_threshold=0.5", "tile-size=512", "out=O", "sliced=always",
      "full_image_pass=true", "merge=greedy", "scaling={mode: db, vmin: -25}"],
     ["predict", "c.ckpt", "a.png", "dir", "--score-threshold", "0.5", "--tile-size", "512", "--out", "O",
      "--sliced", "always", "--full-image-pass", "--merge", "greedy", "--scaling", "{mode: db, vmin: -25}"]),
    (["reconstruct", "c.ckpt", "a.png", "out=f.png", "seed=1"],
     ["reconstruct", "c.ckpt", "a.png", "--out", "f.png", "--seed", "1"]),
    (["probe", "e1", "e2", "data=R", "out=O", "no_random=true", "seed=3"],
     ["probe", "e1", "e2", "--data", "R", "--out", "O", "--no-random", "--seed", "3"]),
    (["data", "synth", "OUT", "train=10", "zoom=2", "unlabeled=0"],
     ["data", "synth", "OUT", "--train", "10", "--zoom", "2", "--unlabeled", "0"]),
    (["data", "synth", "out=OUT", "seed=4"], ["data", "synth", "OUT", "--seed", "4"]),
    (["data", "check", "R", "splits=[train, val]"], ["data", "check", "R", "--splits", "train", "val"]),
    (["data", "convert", "out=O", "S", "from=voc", "classes=sardet", "copy=true", "difficult=drop"],
     ["data", "convert", "S", "O", "--from", "voc", "--classes", "sardet", "--copy", "--difficult", "drop"]),
    (["demo", "out=D", "seeds=2", "profile=gpu", "data.train=12"],
     ["demo", "--out", "D", "--seeds", "2", "--profile", "gpu", "data.train=12"]),
    (["reproduce", "data=R", "gpus=4", "plan_only=true", "pretrain.epochs=1"],
     ["reproduce", "--data", "R", "--gpus", "4", "--plan-only", "pretrain.epochs=1"]),
])
def test_name_value_equals_the_flags(named, flags):
    assert ns(named) == ns(flags)


def test_switches_lists_and_nulls():
    assert ns(["predict", "c", "i", "full_image_pass=false", "--full-image-pass"])["full_image_pass"] is False
    assert ns(["data", "check", "R", "splits=val"])["splits"] == ["val"]
    assert ns(["predict", "c", "i", "--tile-size", "64", "tile_size=null"])["tile_size"] is None
    # text options stay text: YAML would read these as a bool and an int
    assert ns(["evaluate", "c", "data=yes", "split=2017"])["split"] == "2017"
    assert ns(["evaluate", "c", "data=yes"])["data"] == "yes"


def test_config_commands_keep_their_overrides():
    args = parse_args(["finetune", "vitdet_tiny", "out=x", "epochs=2", "data.root=/d"])
    assert args.config == "vitdet_tiny" and args.overrides == ["out=x", "epochs=2", "data.root=/d"]
    assert ns(["demo", "probe=false"])["overrides"] == ["probe=false"]


def test_paths_and_flag_values_are_not_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("seed=1.png").write_bytes(b"")
    args = ns(["reconstruct", "c.ckpt", "seed=1.png", "--out", "out=x.png"])
    assert args["inputs"] == ["seed=1.png"] and args["seed"] == 0 and args["out"] == "out=x.png"
    assert ns(["predict", "c", "seed=*.png", "out=o"])["inputs"] == ["seed=*.png"]  # a glob that matches
    assert ns(["predict", "c", "i", "--", "score_threshold=1"])["inputs"] == ["i", "score_threshold=1"]


def test_required_options_either_way():
    assert ns(["evaluate", "c", "data=R"])["data"] == "R"
    with pytest.raises(SystemExit):
        parse_args(["evaluate", "c"])
    with pytest.raises(SystemExit):
        parse_args(["data", "synth", "train=3"])


@pytest.mark.parametrize(("argv", "message"), [
    (["predict", "c", "i", "scor_threshold=0.5"], "scor_threshold=: unknown option of 'sarmae predict'"),
    (["evaluate", "c", "data=R", "max_dets=1.5"], "max_dets=1.5: expected a whole number"),
    (["evaluate", "c", "data=R", "max-dets=lots"], "max-dets=lots: expected a whole number"),
    (["predict", "c", "i", "sliced=sometimes"], "sliced=sometimes: use one of auto, always, never"),
    (["probe", "e", "data=R", "no_random=maybe"], "no_random=maybe: a switch takes true or false"),
    (["data", "synth", "o", "trian=3"], "did you mean train=?"),
    (["data", "check", "R", "zzz=1"], "options: splits=, root="),
    (["evaluate", "c", "data="], "data=: needs a value"),
])
def test_bad_names_and_values_are_one_line_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_run_name():
    assert run_name("runs/finetune/abc/weights/best.ckpt") == "abc"
    assert run_name("models/detector.ckpt") == "detector"


def test_default_out_folders_and_last_lines(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    seen: dict[str, object] = {}
    import sarmae.data.synth as synth
    import sarmae.experiments.probe as probe
    import sarmae.infer.predict as predict
    import sarmae.infer.reconstruct as reconstruct

    monkeypatch.setattr(predict, "predict", lambda ckpt, inputs, out, **kw: seen.update(predict=out))
    monkeypatch.setattr(reconstruct, "reconstruct", lambda ckpt, inputs, out, seed: seen.update(rec=out))
    monkeypatch.setattr(probe, "run_probe", lambda enc, data, out, **kw: seen.update(probe=out))
    monkeypatch.setattr(synth, "write_dataset", lambda out, **kw: f"synthetic SAR dataset at {out}")
    ckpt = "runs/finetune/r1/weights/best.ckpt"
    assert main(["predict", ckpt, "img.png"]) == 0
    assert main(["reconstruct", "runs/pretrain/m/weights/last.ckpt", "img.png", "seed=2"]) == 0
    assert main(["probe", "enc.safetensors", "data=/data/SARDet_100K/"]) == 0
    assert seen == {"predict": Path("runs/predict/r1"), "rec": Path("runs/reconstruct/m/reconstruction.png"),
                    "probe": Path("runs/probe/SARDet_100K")}
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"wrote {Path('runs/probe/SARDet_100K/probe.md')}, {Path('runs/probe/SARDet_100K/probe.json')}")
    assert main(["data", "synth", "out=ds", "train=1"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "results in ds"
    assert main(["predict", ckpt, "img.png", "out=mine"]) == 0 and seen["predict"] == Path("mine")
