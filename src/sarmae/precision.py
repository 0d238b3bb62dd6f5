"""The numeric precision that fits the hardware: ``trainer.precision: auto`` (every shipped config's default).

bf16 pays only where the device computes it natively. On a CPU with AVX512-BF16 or AMX a bf16 step takes
~0.6-0.8x the float32 time; on a CPU without them (AVX2 only: most laptops, desktops, AMD before Zen 4, many
cloud VMs) PyTorch emulates bf16 and the demo's MAE step ran 18.5x *slower* than float32 (8.6 vs 160 img/s).
GPUs with bf16 (Ampere and later) train in bf16-mixed as the paper does; older GPUs get fp16-mixed (loss scaling).

:func:`resolve_precision` is the one place that turns ``auto`` into a Lightning precision; training, evaluation,
prediction and the benchmarks all ask it, and a run folder's ``config.yaml`` records what it chose. An explicit
value always wins.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sarmae.errors import ConfigError

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "32", "bf16", "16")


# ISA caps below native bf16: ATen's capability (ATEN_CPU_CAPABILITY) and oneDNN's (ONEDNN_MAX_CPU_ISA, which
# OpenVINO's oneDNN kernels obey too), how the benchmarks stand in for an AVX2-only CPU.
_BELOW_BF16 = {"aten": ("DEFAULT", "NO AVX", "AVX2"),
               "onednn": ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")}


def isa_cap() -> str | None:
    """The instruction-set cap this process runs under, if it is below native bf16 (e.g. ``AVX2``), else None."""
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if onednn in _BELOW_BF16["onednn"]:
        return onednn
    aten = torch.backends.cpu.get_cpu_capability()
    return aten if aten in _BELOW_BF16["aten"] and os.environ.get("ATEN_CPU_CAPABILITY") else None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX-BF16) and the libraries may use them: a
    process capped below them (:func:`isa_cap`) runs as such a CPU would, in float32."""
    return isa_cap() is None and bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


def cpu_features() -> list[str]:
    """The CPU's instruction sets that decide the fast paths (native bf16, int8 dot products), from
    ``/proc/cpuinfo``, and ``capped to X`` when the libraries are capped below them (:func:`isa_cap`): what to write
    beside every number measured on a CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ["unknown"]
    flags = next((set(line.partition(":")[2].split()) for line in text.splitlines()
                  if line.partition(":")[0].strip() == "flags"), set())
    found = [f for f in CPU_FEATURES if f in flags]
    cap = isa_cap()
    return found + ([f"capped to {cap}"] if cap else [])


def gpu_has_native_bf16() -> bool:
    """Whether the current CUDA device computes bf16 natively (compute capability 8.0+), not by emulation."""
    return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def uses_gpu(accelerator: str | None = "auto") -> bool:
    """Whether a run with ``trainer.accelerator`` (auto, gpu, cuda, cpu) trains on a GPU here."""
    accelerator = str(accelerator or "auto")
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def auto_precision(accelerator: str | None = "auto") -> str:
    """bf16-mixed where bf16 is native, else 32-true on a CPU and 16-mixed on a GPU."""
    if uses_gpu(accelerator):
        return "bf16-mixed" if gpu_has_native_bf16() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def resolve_precision(value: str, accelerator: str | None = "auto") -> str:
    """``value`` (a ``trainer.precision``) with ``auto`` decided for this machine; an unknown value is an error."""
    value = str(value)
    if value not in PRECISIONS:
        raise ConfigError(f"trainer.precision={value}: use one of {', '.join(PRECISIONS)}")
    return auto_precision(accelerator) if value == "auto" else value


def benchmark_precisions(device: torch.device | str) -> list[str]:
    """The benchmarks' default columns on ``device``: fp32, plus bf16 where ``auto`` would train in bf16 (timing
    emulated bf16 only shows what no default runs; ``--precisions bf16`` still measures it)."""
    chosen = auto_precision("gpu" if torch.device(device).type == "cuda" else "cpu")
    return ["fp32", "bf16"] if chosen == "bf16-mixed" else ["fp32"]
