"""Linear probes on frozen encoder features (``sarmae.experiments.probe``): outputs, a known-good encoder beating
random init, run folder == bare file, one-line errors, and the probe fits on planted toy problems (the fitted models
minimise the documented objectives; undefined metrics are None).

Encoders are 64-d, 2-block ViTs on 64-px chips (patch 8), so a whole probe takes about a second.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from sarmae.data.synth import write_dataset
from sarmae.errors import CheckpointError, DataError
from sarmae.experiments import probe
from sarmae.experiments.probe import RANDOM_LABEL, run_probe
from sarmae.models.checkpoints import save_encoder_safetensors
from sarmae.models.mae import build_mae

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # tiny models: see conftest

# 64 wide: a bare file's head count is then inferable (dim / 64 = 1), so run folder and file build the same ViT.
MODEL = {"img_size": 64, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 1,
         "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2}


def make_run(folder: Path, seed: int = 1, model: dict = MODEL, hand_set: bool = False) -> Path:
    """A pre-training run folder: ``config.yaml`` + ``encoder.safetensors`` (random or hand-set weights)."""
    torch.manual_seed(seed)
    mae = build_mae(model)
    if hand_set:
        red_channel_encoder(mae)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": model, "epochs": 1, "batch_size": 4}))
    save_encoder_safetensors(mae, folder / "encoder.safetensors")
    return folder


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("probe") / "synth"
    write_dataset(root, train=40, val=20, test=0, unlabeled=0, size=64, seed=0)
    return root


# -- a task with a known answer ----------------------------------------------------------------------------------
# RGB chips of speckle (exponential intensities, mean 40): objects (4..6 px boxes, mean 120, each inside one patch
# cell) exist in the red band only; green and blue are independent speckle. A random-init ViT mixes all three bands
# into every feature, so the distractor bands swamp the objects; the hand-set encoder below reads the red band's
# patch mean (the evidence for an object) and keeps green/blue apart, in feature directions that carry nothing
# about the objects. Its objectness probe must therefore be good, clearly better than random init's, and fall to
# chance when the labels are shuffled (so a probe that ignored or misaligned its labels fails the test).
MODEL_B = {**MODEL, "embed_dim": 16, "num_heads": 2}


def red_objects_dataset(root: Path, make_coco, write_image, n_train: int = 40, n_val: int = 20) -> Path:
    rng = np.random.default_rng(0)
    for split, count, first_id in (("train", n_train, 1), ("val", n_val, 1000)):
        images, annotations = [], []
        for i in range(count):
            image_id = first_id + i
            images.append({"id": image_id, "file_name": f"{image_id:07d}.png", "width": 64, "height": 64})
            pixels = rng.exponential(40, (64, 64, 3))
            for cell in rng.permutation(64)[: rng.integers(0, 5)]:
                w, h = (int(v) for v in rng.integers(4, 7, 2))
                x = int(cell % 8) * 8 + int(rng.integers(0, 8 - w + 1))
                y = int(cell // 8) * 8 + int(rng.integers(0, 8 - h + 1))
                pixels[y : y + h, x : x + w, 0] = rng.exponential(120, (h, w))
                annotations.append({"image_id": image_id, "category_id": int(rng.integers(0, 6)), "bbox": [x, y, w, h]})
            write_image(root / "JPEGImages" / split / f"{image_id:07d}.png", np.clip(pixels, 0, 255).astype(np.uint8))
        make_coco(root, split, images, annotations, write_images=False)
    return root


def red_channel_encoder(mae) -> None:
    """Token entering the blocks: (red patch mean, 10, +r1, -r1, ..., +r7, -r7) with r_k fixed random projections
    of the green/blue pixels; every block is the identity (attention and MLP outputs zeroed, the residual stays);
    no position embedding. The +/- pairs and the large constant keep the final LayerNorm's mean and scale nearly
    free of the distractor bands, so channel 0 stays a near-linear function of the red patch mean."""
    with torch.no_grad():
        proj = mae.patch_embed.proj  # weight (16, 3, 8, 8)
        proj.weight.zero_()
        proj.bias.zero_()
        proj.weight[0, 0] = 1.0 / 64
        proj.bias[1] = 10.0
        r = 3.0 * torch.randn(7, 2, 8, 8, generator=torch.Generator().manual_seed(0)) / 8
        proj.weight[2::2, 1:] = r
        proj.weight[3::2, 1:] = -r
        mae.pos_embed.zero_()
        for block in mae.blocks:
            for layer in (block.attn.proj, block.mlp.fc2):
                layer.weight.zero_()
                layer.bias.zero_()


def metrics(row: dict) -> tuple:
    return (row["presence"]["mAP"], row["presence"]["AP_per_class"], row["objectness"]["AP"],
            row["localisation"]["MAE"], row["localisation"]["R2"])


# -- (a) outputs ------------------------------------------------------------------------------------------


def test_writes_json_and_markdown_with_every_row_and_metric(synth_root, tmp_path, capsys):
    run = make_run(tmp_path / "runs" / "mae_small")
    out = tmp_path / "probe"
    result = run_probe([run], synth_root, out, labels={str(run): "SAR MAE"})

    on_disk = json.loads((out / "probe.json").read_text())
    assert on_disk == result
    assert list(result["encoders"]) == ["SAR MAE", RANDOM_LABEL]
    assert result["data"]["train_images"] == 40 and result["data"]["val_images"] == 20
    assert {"features", "presence", "objectness", "localisation", "logistic_C", "ridge_l2"} <= set(result["protocol"])
    classes = result["data"]["classes"]
    for label, row in result["encoders"].items():
        assert row["architecture"] == {**{k: MODEL[k] for k in ("embed_dim", "depth", "num_heads", "patch_size",
                                                                "img_size")}, "mlp_ratio": 4.0}, label
        pres, obj, loc = row["presence"], row["objectness"], row["localisation"]
        assert sorted(pres["AP_per_class"]) + sorted(pres["skipped_classes"]) == sorted(classes)
        assert pres["AP_per_class"], "the synthetic val split has objects of several classes"
        for value in (pres["mAP"], *pres["AP_per_class"].values(), obj["AP"], pres["chance"], obj["chance"]):
            assert math.isfinite(value) and 0.0 <= value <= 1.0
        assert pres["mAP"] == pytest.approx(np.mean(list(pres["AP_per_class"].values())), abs=1e-5)
        assert (pres["n_train"], pres["n_val"]) == (40, 20)
        assert (obj["n_train"], obj["n_val"]) == (40 * 64, 20 * 64)  # 8 x 8 patches per chip
        assert 0 < obj["positives_val"] < obj["n_val"]
        assert loc["n_train"] > 10 and loc["n_val"] > 5
        for value in (loc["MAE"], loc["MAE_constant"]):
            assert math.isfinite(value) and 0.0 <= value <= 1.0
        for value in (loc["R2"], loc["R2_constant"]):
            assert math.isfinite(value) and value <= 1.0
        assert row["seconds"]["total"] > 0 and row["seconds"]["features"] > 0
    assert result["encoders"]["SAR MAE"]["source"] == str(run)

    md = (out / "probe.md").read_text()
    header = "| encoder | presence mAP | objectness AP | localisation MAE (patches) | localisation R² |"
    assert md.splitlines()[0] == header
    for label, row in result["encoders"].items():
        assert f"| {label} | {row['presence']['mAP']:.3f} | {row['objectness']['AP']:.3f} | " \
               f"{row['localisation']['MAE']:.3f} | {row['localisation']['R2']:.3f} |" in md
    assert "| *chance / train mean* |" in md and "Linear probes on frozen features" in md
    assert header in capsys.readouterr().out


def test_default_labels_and_no_random_row(synth_root, tmp_path):
    a = make_run(tmp_path / "a" / "pretrain", seed=1)
    b = make_run(tmp_path / "b" / "pretrain", seed=2)
    shutil.copy(a / "encoder.safetensors", tmp_path / "mine.safetensors")
    result = run_probe([a, b, tmp_path / "mine.safetensors"], synth_root, None, include_random=False)
    assert list(result["encoders"]) == ["a/pretrain", "b/pretrain", "mine"]


# -- (b) information the encoder carries shows up --------------------------------------------------------------


def test_encoder_that_carries_the_objects_beats_random_init_on_objectness(tmp_path, make_coco, write_image):
    root = red_objects_dataset(tmp_path / "red", make_coco, write_image)
    run = make_run(tmp_path / "red_reader", model=MODEL_B, hand_set=True)
    result = run_probe([run], root, None, seed=0)
    known = result["encoders"]["red_reader"]["objectness"]
    rnd = result["encoders"][RANDOM_LABEL]["objectness"]
    assert known["chance"] < 0.05  # about 3 % of the patches hold a centre
    assert known["AP"] > 0.7, known
    assert known["AP"] > rnd["AP"] + 0.2, (known, rnd)

    # Negative control: the same features and probe with the train labels shuffled score near chance.
    train, val = probe.load_split(root, "train", 64), probe.load_split(root, "val", 64)
    enc = probe.load_probe_encoder(run)
    tok_train = probe.encode(enc.model, train.images, enc.mean, enc.std).reshape(-1, 16)
    tok_val = probe.encode(enc.model, val.images, enc.mean, enc.std).reshape(-1, 16)
    y_train, y_val = probe.targets(train, 8).objectness, probe.targets(val, 8).objectness
    assert probe.probe_objectness(tok_train, tok_val, y_train, y_val)["AP"] == known["AP"]
    shuffled = [probe.probe_objectness(tok_train, tok_val, np.random.default_rng(s).permutation(y_train), y_val)["AP"]
                for s in range(5)]
    assert max(shuffled) < 0.5 and np.mean(shuffled) < 0.2, shuffled


# -- (c) run folder == bare file, determinism --------------------------------------------------------------------


def test_run_folder_and_bare_encoder_file_give_identical_numbers(synth_root, tmp_path):
    run = make_run(tmp_path / "run", seed=3)
    bare = tmp_path / "elsewhere" / "encoder.safetensors"
    bare.parent.mkdir()
    shutil.copy(run / "encoder.safetensors", bare)
    official = tmp_path / "mae_pretrain_vit.pth"  # the official MAE release format: {'model': encoder}
    torch.save({"model": load_file(bare)}, official)
    labels = {str(run): "folder", str(bare): "file", str(official): "pth"}
    first = run_probe([run, bare, official], synth_root, None, labels=labels, seed=5)
    rows = first["encoders"]
    assert list(rows) == ["folder", "file", "pth", RANDOM_LABEL]  # one architecture: one random row
    assert rows["folder"]["architecture"] == rows["file"]["architecture"] == rows["pth"]["architecture"]
    assert metrics(rows["folder"]) == metrics(rows["file"]) == metrics(rows["pth"])
    assert metrics(rows["folder"]) != metrics(rows[RANDOM_LABEL])
    again = run_probe([bare], synth_root, None, seed=5)["encoders"]
    assert metrics(again[RANDOM_LABEL]) == metrics(rows[RANDOM_LABEL])  # random init is seeded


def test_img_size_override_resizes_the_position_embedding(tmp_path):
    run = make_run(tmp_path / "run")
    enc = probe.load_probe_encoder(run / "encoder.safetensors", img_size=96)
    assert enc.arch["img_size"] == 96 and enc.arch["patch_size"] == 8
    assert any("8x8->12x12" in note for note in enc.notes)
    assert probe.load_probe_encoder(run).arch["img_size"] == 64  # default: the checkpoint's own grid


# -- (d) one-line errors ------------------------------------------------------------------------------------------


def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_bad_inputs_give_one_line_errors(synth_root, tmp_path):
    with pytest.raises(CheckpointError) as exc:
        run_probe([tmp_path / "missing.safetensors"], synth_root, None)
    assert "no such file or folder" in one_line(exc)

    (tmp_path / "unfinished" / "weights").mkdir(parents=True)
    (tmp_path / "unfinished" / "config.yaml").write_text(yaml.safe_dump({"model": MODEL}))
    with pytest.raises(CheckpointError) as exc:
        run_probe([tmp_path / "unfinished"], synth_root, None)
    assert "no encoder.safetensors" in one_line(exc) and "last.ckpt" in one_line(exc)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError) as exc:
        run_probe([garbage], synth_root, None)
    assert "garbage.pth" in one_line(exc)

    not_vit = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7)}, not_vit)
    with pytest.raises(CheckpointError) as exc:
        run_probe([not_vit], synth_root, None)
    assert "patch_embed" in one_line(exc)

    run = make_run(tmp_path / "ok")
    with pytest.raises(DataError) as exc:
        run_probe([run], tmp_path / "no_dataset", None)
    one_line(exc)


# -- the probes on planted toy problems -----------------------------------------------------------------------------


def toy_features(n: int, seed: int) -> torch.Tensor:
    """float32 like encoder tokens, on a scale and offset the standardisation has to undo."""
    gen = torch.Generator().manual_seed(seed)
    return 3.0 * torch.randn(n, 5, generator=gen) + torch.tensor([1.0, -2.0, 0.5, 4.0, 0.0])


def test_probes_recover_planted_rules_and_give_none_where_undefined():
    xt, xv = toy_features(400, 0), toy_features(200, 1)

    def rule(x: torch.Tensor) -> np.ndarray:  # linearly separable in the raw features
        return ((x[:, 0] - 1.0) - 0.5 * (x[:, 1] + 2.0) > 0.6).numpy()

    obj = probe.probe_objectness(xt, xv, rule(xt), rule(xv))
    assert obj["AP"] > 0.97 and obj["chance"] == pytest.approx(rule(xv).mean(), abs=1e-6), obj
    assert (obj["positives_train"], obj["n_train"], obj["n_val"]) == (int(rule(xt).sum()), 400, 200)
    assert probe.probe_objectness(xt, xv, rule(xt), np.zeros(200, bool))["AP"] is None  # no val positive
    assert probe.probe_objectness(xt, xv, np.zeros(400, bool), rule(xv))["AP"] is None  # one train class

    presence_t = np.stack([rule(xt), np.zeros(400, bool), rule(xt)], axis=1)
    presence_v = np.stack([rule(xv), rule(xv), np.zeros(200, bool)], axis=1)
    pres = probe.probe_presence(xt, xv, presence_t, presence_v, ["a", "b", "c"])
    assert list(pres["AP_per_class"]) == ["a"] and pres["mAP"] == pres["AP_per_class"]["a"] > 0.97
    assert pres["skipped_classes"] == {"b": "0 of 400 train chips positive", "c": "no positive val chip"}
    assert pres["chance"] == pytest.approx(rule(xv).mean(), abs=1e-6)

    def offset(x: torch.Tensor) -> np.ndarray:
        return torch.stack([0.5 + 0.05 * x[:, 2], 0.4 - 0.04 * x[:, 3]], dim=1).numpy().astype(np.float64)

    loc = probe.probe_localisation(xt, xv, offset(xt), offset(xv))
    # ridge_l2 = 1 on standardised features halves a lone feature's slope: R^2 about 0.75, MAE about half
    assert loc["R2"] > 0.6 and loc["R2_constant"] <= 0.0 and loc["MAE"] < 0.6 * loc["MAE_constant"], loc
    constant_dy = offset(xv)
    constant_dy[:, 1] = 0.5
    assert probe.probe_localisation(xt, xv, offset(xt), constant_dy)["R2"] is None  # R^2 undefined: None
    assert probe.probe_localisation(xt[:1], xv, offset(xt)[:1], offset(xv))["MAE"] is None  # too few to fit


def test_fits_minimise_the_documented_objectives():
    """The scikit-learn models minimise what PROTOCOL states (C and alpha mapped right, intercepts free):
    logistic sum(log-loss) + |w|^2 / (2 logistic_C), ridge mean squared error + ridge_l2 |w|^2."""
    x, _ = probe.standardise(toy_features(400, 0), toy_features(10, 1))
    assert np.abs(x.mean(0)).max() < 1e-12 and np.abs(x.std(0) - 1).max() < 1e-12
    y = x[:, 0] - 0.5 * x[:, 1] + np.random.default_rng(0).normal(0, 0.5, 400) > 0.2
    model = probe.fit_logistic(x, y)
    p = 1 / (1 + np.exp(-model.decision_function(x)))
    grad_w = x.T @ (p - y) + model.coef_.ravel() / probe.LOGISTIC_C
    assert np.abs(grad_w).max() < 1e-6 and abs((p - y).sum()) < 1e-6
    assert np.abs(model.coef_).max() > 0.5  # not shrunk to nothing: the penalty is on the summed loss

    target = np.stack([0.3 * x[:, 2] + 0.5, -0.2 * x[:, 3] + 0.1], axis=1)
    ridge = probe.fit_ridge(x, target)
    residual = ridge.predict(x) - target
    grad = 2 * x.T @ residual / len(x) + 2 * probe.RIDGE_L2 * ridge.coef_.T
    assert np.abs(grad).max() < 1e-10 and np.abs(residual.mean(0)).max() < 1e-10
    np.testing.assert_allclose(ridge.coef_[[0, 1], [2, 3]], [0.15, -0.1], atol=0.02)  # about halved by l2 = 1
