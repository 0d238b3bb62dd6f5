"""trainer.precision: auto, decided per kind of device with the hardware's capabilities faked."""

import pytest
import torch

from sarmae.config import load_config
from sarmae.errors import ConfigError
from sarmae.precision import CPU_FEATURES, auto_precision, benchmark_precisions, cpu_features, resolve_precision
from sarmae.train.finetune import finetune_config
from sarmae.train.pretrain import pretrain_config


def fake_machine(monkeypatch, *, avx512_bf16=False, amx=False, cuda=False, cuda_bf16=False, capability="AVX512",
                 onednn=None):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", capability.lower())
    if onednn:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn)
    else:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: cuda_bf16)


@pytest.mark.parametrize(("machine", "expected"), [
    ({}, "32-true"),                                      # AVX2-only CPU: bf16 would be emulated (18x slower)
    ({"avx512_bf16": True}, "bf16-mixed"),                # Zen 4 / Cooper Lake and later
    ({"amx": True}, "bf16-mixed"),                        # Sapphire Rapids and later
    ({"cuda": True, "cuda_bf16": True}, "bf16-mixed"),    # Ampere and later
    ({"cuda": True}, "16-mixed"),                         # V100, T4: fp16 with loss scaling
    ({"cuda": True, "cuda_bf16": True, "avx512_bf16": False}, "bf16-mixed"),
    ({"avx512_bf16": True, "capability": "AVX2"}, "32-true"),  # ATEN_CPU_CAPABILITY=avx2: as an AVX2-only CPU
    ({"avx512_bf16": True, "onednn": "AVX2"}, "32-true"),      # ONEDNN_MAX_CPU_ISA=AVX2 (OpenVINO obeys it too)
    ({"avx512_bf16": True, "onednn": "AVX512_CORE_BF16"}, "bf16-mixed"),  # a cap that keeps bf16
])
def test_auto_follows_the_hardware(monkeypatch, machine, expected):
    fake_machine(monkeypatch, **machine)
    assert auto_precision() == expected
    assert resolve_precision("auto") == expected


def test_accelerator_cpu_on_a_gpu_machine_decides_for_the_cpu(monkeypatch):
    fake_machine(monkeypatch, cuda=True, cuda_bf16=True)
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("auto", "gpu") == "bf16-mixed"


def test_an_explicit_value_wins_and_a_typo_is_an_error(monkeypatch):
    fake_machine(monkeypatch)
    assert resolve_precision("bf16-mixed") == "bf16-mixed"
    fake_machine(monkeypatch, avx512_bf16=True)
    assert resolve_precision("32-true") == "32-true"
    with pytest.raises(ConfigError, match="trainer.precision=bf61"):
        resolve_precision("bf61")


def test_benchmarks_time_bf16_only_where_auto_would_use_it(monkeypatch):
    fake_machine(monkeypatch)
    assert benchmark_precisions("cpu") == ["fp32"]
    fake_machine(monkeypatch, avx512_bf16=True)
    assert benchmark_precisions("cpu") == ["fp32", "bf16"]


@pytest.mark.parametrize("config", ["mae_vitb16_sardet100k", "vitdet_b_sardet100k", "mae_tiny", "vitdet_tiny",
                                    "demo/pretrain.yaml", "demo/finetune.yaml", "demo/pretrain_gpu.yaml",
                                    "demo/finetune_gpu.yaml"])
def test_every_shipped_config_defaults_to_auto_and_the_complete_config_records_the_choice(monkeypatch, config):
    assert load_config(config)["trainer"]["precision"] == "auto"
    complete = pretrain_config if "mae" in config or "pretrain" in config else finetune_config
    for machine, expected in (({}, "32-true"), ({"avx512_bf16": True}, "bf16-mixed")):
        fake_machine(monkeypatch, **machine)
        assert complete(load_config(config))["trainer"]["precision"] == expected
    assert complete(load_config(config, ["trainer.precision=32-true"]))["trainer"]["precision"] == "32-true"


def test_cpu_features_name_the_instruction_sets_and_a_cap(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    found = cpu_features()
    assert set(found) <= set(CPU_FEATURES)
    assert ("avx512_bf16" in found) == bool(torch.cpu._is_avx512_bf16_supported())  # the flags torch sees
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # how the benchmarks stand in for an AVX2-only CPU
    assert cpu_features() == [*found, "capped to AVX2"]
