"""Strict configs: every shipped config only uses keys its command knows; a typo or a wrong type is a one-line
error naming the key and the closest valid one; configs are found inside the installed package."""

from __future__ import annotations

from pathlib import Path

import pytest

from sarmae.config import CONFIG_DIR, check_keys, complete_config, config_schema, load_config, load_yaml
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


def test_complete_config_fills_every_default_once_and_types_numbers(tmp_path):
    root = CONFIG_DIR / "vitdet_b_sardet100k.yaml"
    user = tmp_path / "mine.yaml"  # a user's config without _base_: only what it changes
    user.write_text("epochs: 3\noptim: {lr: 1}\nmodel: {fpn_channels: 64}\n"
                    "data: {root: /d, scaling: {mode: fixed, low: 0, high: 255}}\n")
    cfg = complete_config(load_config(user), "vitdet_b_sardet100k", ("fpn_channels",), ("data.scaling",))
    defaults = load_yaml(root)
    assert cfg["epochs"] == 3 and cfg["trainer"] == defaults["trainer"] and cfg["eval"] == defaults["eval"]
    assert cfg["optim"]["lr"] == 1.0 and isinstance(cfg["optim"]["lr"], float)  # typed like the default 1e-4
    assert cfg["optim"]["warmup_iters"] == 500 and cfg["model"]["fpn_channels"] == 64
    assert cfg["model"]["window_size"] == defaults["model"]["window_size"]
    assert cfg["data"]["scaling"] == {"mode": "fixed", "low": 0, "high": 255}  # an open section is replaced whole
    again = complete_config(cfg, "vitdet_b_sardet100k", ("fpn_channels",), ("data.scaling",))
    assert again == cfg  # idempotent: a run's saved config goes through it unchanged
    with pytest.raises(ConfigError, match="optim.lrr: unknown key; did you mean optim.lr"):
        complete_config({"optim": {"lrr": 1}}, "vitdet_b_sardet100k")


def test_the_engine_reads_no_defaults_of_its_own():
    """Defaults live in the root YAMLs only: the training engine reads complete configs, never .get(key, default)
    on a config section (checkpoint dicts, which come from other versions, are read tolerantly elsewhere)."""
    import re

    import sarmae

    pattern = re.compile(r"(cfg|ocfg|tcfg|data)\.get\(|get_dotted\(")
    for path in sorted((Path(sarmae.__file__).parent / "train").glob("*.py")):
        hits = [line for line in path.read_text().splitlines() if pattern.search(line)]
        assert not hits, f"{path.name}: {hits}"


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
