"""The MAE encoders shipped for the demo: each is what the shipped pretrain config makes on the demo's own
generated pool (provenance record checked against the configs and the generators' versions), byte for byte the
file the record describes, and loadable into the demo's detector."""

import hashlib
import json

import pytest

from sarmae.config import load_config
from sarmae.experiments.demo import ENCODER_ROWS, demo_plan, shipped_encoder, shipped_mismatch
from sarmae.models.checkpoints import safetensors_metadata
from sarmae.train.pretrain import pretrain_config

SHIPPED = ["natural", "sar_pixels"]


@pytest.mark.parametrize("name", SHIPPED)
def test_the_record_matches_the_shipped_configs_and_generators(name):
    plan = demo_plan("cpu", [])
    assert name in plan["rows"]
    assert shipped_mismatch(name, plan) is None  # same pretrain config + overrides, same pool and generator version
    path = shipped_encoder(name)
    record = json.loads(path.with_suffix(".json").read_text())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == record["encoder_sha256"]
    # the effective config the run recorded is the one today's shipped config gives
    recorded = record["config"]
    expected = pretrain_config(load_config(record["config_name"], [f"data.images={recorded['data']['images']}",
                                                                   *record["overrides"]]))
    assert recorded["trainer"].pop("precision") in ("bf16-mixed", "32-true")  # what auto chose where it was made
    expected["trainer"].pop("precision")
    for where in ("out", "resume"):  # where the run wrote, and whether it could continue (the demo passes auto)
        recorded.pop(where), expected.pop(where)
    assert recorded == expected
    assert recorded["model"]["target"] == ENCODER_ROWS[name][2]
    assert record["data"]["images"] == plan["data"]["unlabeled"] and len(record["data"]["sha256"]) == 64
    assert record["seconds"] > 0 and record["machine"]["cpu"] and record["code"]["sarmae"]


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_encoder_fits_the_demo_detector(name):
    meta = safetensors_metadata(shipped_encoder(name))
    fin = load_config("demo/finetune.yaml")
    assert meta["sarmae"] == "mae-encoder" and int(meta["img_size"]) == fin["model"]["pretrain_img_size"]
    assert int(meta["embed_dim"]) == 192  # the tiny ViT of demo/pretrain.yaml and demo/finetune.yaml


def test_a_changed_plan_does_not_use_the_shipped_encoders():
    assert "generator" in shipped_mismatch("sar_pixels", demo_plan("cpu", ["data.zoom=2.0"]))
    assert "made by" in shipped_mismatch("natural", demo_plan("cpu", ["pretrain.overrides=[epochs=5]"]))
    assert shipped_mismatch("sar_gradients", demo_plan("cpu", [])) == "no shipped encoder"
