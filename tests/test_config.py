"""Strict configs: every shipped config only uses keys its command knows; a typo or a wrong type is a one-line
error naming the key and the closest valid one; configs are found inside the installed package."""

from __future__ import annotations

from pathlib import Path

import pytest

from sarmae.config import CONFIG_DIR, check_keys, config_schema, load_config
from sarmae.errors import ConfigError

SCHEMA = {"epochs": 12, "lr": 1e-4, "strict": False, "name": None, "betas": [0.9, 0.999],
          "data": {"root": None, "workers": 4, "scaling": {}}}


@pytest.mark.parametrize("cfg,message", [
    ({"epochz": 1}, "epochz: unknown key; did you mean epochs?"),
    ({"data": {"wrokers": 2}}, "data.wrokers: unknown key; did you mean data.workers?"),
    ({"zzz": 1}, "zzz: unknown key; known keys here: epochs, lr"),
    ({"epochs": 2.5}, "epochs=2.5: expected int like the default 12"),
    ({"strict": "yes"}, "strict='yes': expected bool"),
    ({"epochs": True}, "epochs=True: expected int"),
    ({"data": 3}, "data=3: expected a mapping"),
    ({"betas": 0.9}, "betas=0.9: expected list"),
])
def test_typos_and_wrong_types_are_one_line_errors(cfg, message):
    with pytest.raises(ConfigError) as info:
        check_keys(cfg, SCHEMA)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_valid_values_pass():
    check_keys({"epochs": 3, "lr": 1, "name": "x", "betas": (0.9, 0.95), "data": {"root": "/d", "scaling": {"a": 1}}},
               SCHEMA)  # an int for a float, anything for a null default, an open section takes any key


@pytest.mark.parametrize("config,root,model_keys", [
    ("mae_tiny", "mae_vitb16_sardet100k", "mae"), ("demo/pretrain.yaml", "mae_vitb16_sardet100k", "mae"),
    ("demo/pretrain_gpu.yaml", "mae_vitb16_sardet100k", "mae"), ("vitdet_tiny", "vitdet_b_sardet100k", "det"),
    ("demo/finetune.yaml", "vitdet_b_sardet100k", "det"), ("demo/finetune_gpu.yaml", "vitdet_b_sardet100k", "det"),
    ("demo/demo_gpu.yaml", "demo/demo.yaml", None),
])
def test_every_shipped_config_uses_known_keys(config, root, model_keys):
    from sarmae.models.mae import MAE_DEFAULTS
    from sarmae.models.vitdet import DETECTOR_KEYS

    keys = {"mae": ("size", *MAE_DEFAULTS), "det": DETECTOR_KEYS, None: ()}[model_keys]
    check_keys(load_config(config), config_schema(root, keys, open_sections=("data.scaling",)))


def test_configs_ship_inside_the_package():
    import sarmae

    assert CONFIG_DIR == Path(sarmae.__file__).parent / "configs"
    assert (CONFIG_DIR / "demo" / "demo.yaml").is_file()


@pytest.mark.parametrize("command,config,typo,message", [
    ("finetune", "vitdet_tiny", "epochz=1", "epochz: unknown key; did you mean epochs?"),
    ("finetune", "vitdet_tiny", "optim.lrr=0.1", "optim.lrr: unknown key; did you mean optim.lr?"),
    ("finetune", "vitdet_tiny", "model.fpn_chanels=16", "did you mean model.fpn_channels?"),
    ("pretrain", "mae_tiny", "trainer.precison=bf16-mixed", "did you mean trainer.precision?"),
    ("pretrain", "mae_tiny", "epochs=ten", "epochs='ten': expected int"),
])
def test_a_typo_on_the_command_line_stops_the_command(tmp_path, capsys, command, config, typo, message):
    from sarmae.cli import main

    assert main([command, config, f"data.root={tmp_path}", f"out={tmp_path / 'run'}", typo]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # stopped before anything was written


def test_scientific_notation_is_a_float_in_overrides_and_files(tmp_path):
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 1e-3\n  blr: 1.5e-4\nname: 2e5x\n")
    cfg = load_config(tmp_path / "c.yaml", ["optim.wd=5e-2", "epochs=3"])
    assert cfg["optim"] == {"lr": 0.001, "blr": 0.00015, "wd": 0.05} and cfg["name"] == "2e5x" and cfg["epochs"] == 3
