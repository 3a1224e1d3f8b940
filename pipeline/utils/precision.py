"""``precision: auto``: the fastest correct precision for the hardware, and the report of that hardware.

bf16 autocast is fast only where the hardware computes in bf16 natively: a CPU with AVX512-BF16 or AMX-BF16 (and
torch's kernels allowed to use them), or a CUDA GPU for which ``torch.cuda.is_bf16_supported()``. Elsewhere it is
emulated: on a 2-core AMD EPYC with AVX2 but no AVX-512, the demo's denoiser training step (4 x 32^3) took 18.9 s
in bf16 against 0.49 s in float32 (39x slower). :func:`resolve_precision` therefore turns ``"auto"`` into
``"bf16"`` on such hardware and ``"fp32"`` everywhere else, logs which one it chose and why, and warns once when
``"bf16"`` is asked for on a CPU that would emulate it.

The hardware is described by a :class:`HardwareReport`. :func:`detect_hardware` builds it from what torch reports
(``torch.backends.cpu.get_cpu_capability()``, the CPU feature flags of ``torch._C._cpu._get_cpu_capability()``,
oneDNN's ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``), falling back to ``/proc/cpuinfo``; tests pass their
own report to simulate another machine. The environment variable ``RESUNET3D_NATIVE_BF16`` (``1`` or ``0``)
overrides the CPU's verdict, e.g. to keep a test suite's ``auto`` at float32 on every machine.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import platform
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "BF16_SLOWDOWN",
    "NATIVE_BF16_ENV",
    "PRECISIONS",
    "HardwareReport",
    "detect_hardware",
    "resolve_precision",
]

logger = logging.getLogger(__name__)

#: The precisions every entry point accepts; ``auto`` is resolved by :func:`resolve_precision`.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Environment variable overriding the CPU's native-bf16 verdict: ``1`` (native) or ``0`` (emulated).
NATIVE_BF16_ENV = "RESUNET3D_NATIVE_BF16"
#: The measurement behind the warning for bf16 on a CPU without native bf16.
BF16_SLOWDOWN = (
    "bf16 autocast was measured 39x slower than fp32 for the demo's denoiser training step on a 2-core AVX2 AMD EPYC "
    "without AVX512-BF16 (18.9 s vs 0.49 s per step)"
)
#: CPU flags the report keeps (``/proc/cpuinfo`` spelling).
_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
#: torch's spelling of the same flags (``torch._C._cpu._get_cpu_capability()``).
_TORCH_FLAGS = {
    "avx2": "avx2",
    "avx512_f": "avx512f",
    "avx512_bf16": "avx512_bf16",
    "amx_bf16": "amx_bf16",
    "amx_tile": "amx_tile",
}
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_announced: set[tuple[Any, ...]] = set()


@dataclasses.dataclass(frozen=True)
class HardwareReport:
    """What decides whether bf16 runs natively: the CPU's model, flags and kernels, and the CUDA GPU if any.

    Attributes:
        cpu_model: the CPU's model name (``/proc/cpuinfo``), e.g. ``"AMD EPYC 7B13"``.
        cpu_kernels: the vector instruction set torch's CPU kernels use
            (``torch.backends.cpu.get_cpu_capability()``: ``"AVX2"``, ``"AVX512"``...; ``ATEN_CPU_CAPABILITY``
            lowers it).
        cpu_flags: the CPU's flags among ``avx2``, ``avx512f``, ``avx512_bf16``, ``amx_bf16``, ``amx_tile``.
        onednn_bf16: whether oneDNN (the convolutions' library) computes bf16 on this CPU
            (``ONEDNN_MAX_CPU_ISA`` lowers it); ``None`` when torch does not say.
        logical_cpus: logical CPUs.
        native_bf16_override: the ``RESUNET3D_NATIVE_BF16`` verdict, ``None`` when unset.
        cuda_device: the CUDA GPU's name, ``None`` without one.
        cuda_bf16: whether that GPU supports bf16 (``torch.cuda.is_bf16_supported()``).
    """

    cpu_model: str = "unknown CPU"
    cpu_kernels: str = "DEFAULT"
    cpu_flags: frozenset[str] = frozenset()
    onednn_bf16: bool | None = None
    logical_cpus: int = 1
    native_bf16_override: bool | None = None
    cuda_device: str | None = None
    cuda_bf16: bool = False

    @property
    def native_cpu_bf16(self) -> bool:
        """Whether bf16 autocast runs natively on this CPU (AVX512-BF16 or AMX-BF16 in use), not emulated."""
        if self.native_bf16_override is not None:
            return self.native_bf16_override
        return (
            bool(_BF16_FLAGS & self.cpu_flags)
            and self.onednn_bf16 is not False
            and self.cpu_kernels.upper().startswith("AVX512")
        )

    def cpu_bf16_reason(self) -> str:
        """Why the CPU counts as having native bf16 or not, in a few words."""
        if self.native_bf16_override is not None:
            return f"{NATIVE_BF16_ENV}={int(self.native_bf16_override)}"
        found = sorted(_BF16_FLAGS & self.cpu_flags)
        if not found:
            return "the CPU has neither AVX512-BF16 nor AMX-BF16"
        if self.onednn_bf16 is False:
            return f"the CPU has {'/'.join(found)} but oneDNN does not use it (is ONEDNN_MAX_CPU_ISA set?)"
        if not self.cpu_kernels.upper().startswith("AVX512"):
            kernels = self.cpu_kernels
            return f"the CPU has {'/'.join(found)} but torch's kernels run {kernels} (is ATEN_CPU_CAPABILITY set?)"
        return f"the CPU has {'/'.join(found)}"

    def describe_cpu(self) -> str:
        """One line naming the CPU, its AVX-512/AMX flags and torch's kernels, e.g. for a benchmark's header.

        Returns:
            E.g. ``"AMD EPYC 7B13, 2 logical CPUs, AVX2 (no AVX-512, no AVX512-BF16, no AMX), torch kernels AVX2,
            native bf16: no"``.
        """

        def has(flag: str) -> str:
            return "" if flag in self.cpu_flags else "no "

        flags = f"{has('avx2')}AVX2, {has('avx512f')}AVX-512, {has('avx512_bf16')}AVX512-BF16, {has('amx_bf16')}AMX"
        native = "yes" if self.native_cpu_bf16 else "no"
        return (
            f"{self.cpu_model}, {self.logical_cpus} logical CPUs, {flags}, torch kernels {self.cpu_kernels}, "
            f"native bf16: {native} ({self.cpu_bf16_reason()})"
        )


def _proc_cpuinfo() -> tuple[str | None, frozenset[str]]:
    """The model name and the kept flags from ``/proc/cpuinfo`` (``(None, empty)`` where it does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None, frozenset()
    model, flags = None, frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split()) & frozenset(_FLAGS)
    return model, flags


@functools.lru_cache(maxsize=1)
def _cpu_facts() -> tuple[str, str, frozenset[str], bool | None]:
    """``(model, kernels, flags, onednn_bf16)`` of this CPU, read once per process."""
    model, flags = _proc_cpuinfo()
    try:
        reported = torch._C._cpu._get_cpu_capability()  # a dict of flags in torch >= 2.5
    except (AttributeError, RuntimeError):
        reported = {}
    if isinstance(reported, dict):
        torch_flags = {ours for theirs, ours in _TORCH_FLAGS.items() if reported.get(theirs)}
        flags = flags | frozenset(torch_flags)
        model = model or (str(reported["cpu_name"]) if reported.get("cpu_name") else None)
    try:
        kernels = str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        kernels = "DEFAULT"
    try:
        onednn: bool | None = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn = None
    return model or platform.processor() or platform.machine() or "unknown CPU", kernels, flags, onednn


def _override() -> bool | None:
    value = os.environ.get(NATIVE_BF16_ENV, "").strip().lower()
    if not value:
        return None
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise ValueError(f"{NATIVE_BF16_ENV} must be 1 or 0 (or unset), got {os.environ[NATIVE_BF16_ENV]!r}.")


def detect_hardware() -> HardwareReport:
    """Report this machine's CPU (model, flags, torch's and oneDNN's bf16 use) and CUDA GPU.

    Returns:
        The report (the CPU facts are read once per process; ``RESUNET3D_NATIVE_BF16`` is read on every call).

    Raises:
        ValueError: if ``RESUNET3D_NATIVE_BF16`` is set to something other than 1 or 0.
    """
    model, kernels, flags, onednn = _cpu_facts()
    cuda_device, cuda_bf16 = None, False
    if torch.cuda.is_available():
        cuda_device = torch.cuda.get_device_name(0)
        cuda_bf16 = bool(torch.cuda.is_bf16_supported())
    return HardwareReport(
        cpu_model=model,
        cpu_kernels=kernels,
        cpu_flags=flags,
        onednn_bf16=onednn,
        logical_cpus=os.cpu_count() or 1,
        native_bf16_override=_override(),
        cuda_device=cuda_device,
        cuda_bf16=cuda_bf16,
    )


def resolve_precision(
    requested: str, device: str | torch.device = "cpu", hardware: HardwareReport | None = None
) -> str:
    """Turn a requested precision into the one to run, refusing those the device cannot run.

    ``"auto"`` is the fastest correct choice: ``"bf16"`` on a CPU with native bf16
    (:attr:`HardwareReport.native_cpu_bf16`) or on a CUDA GPU that supports it, ``"fp32"`` otherwise (any other
    device included). Explicit precisions are kept; ``"bf16"`` on a CPU without native bf16 logs one warning with the
    measured slowdown. The choice and its reason are logged (INFO) once per request, device and hardware.

    Args:
        requested: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (CUDA only).
        device: the device the network runs on.
        hardware: the hardware to decide for (default: :func:`detect_hardware`; tests pass their own).

    Returns:
        ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    Raises:
        ValueError: for an unknown precision, or fp16 on a device that is not CUDA.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {requested!r}.")
    device = torch.device(device)
    if requested == "fp16" and device.type != "cuda":
        raise ValueError(f"precision='fp16' needs a CUDA device, got {device}; use 'auto' on the CPU.")
    if requested == "fp32" or requested == "fp16":
        return requested
    hardware = detect_hardware() if hardware is None else hardware
    if device.type == "cuda":
        native = hardware.cuda_bf16
        why = f"{hardware.cuda_device or 'the GPU'} {'supports' if native else 'does not support'} bf16"
    elif device.type == "cpu":
        native = hardware.native_cpu_bf16
        why = hardware.cpu_bf16_reason()
    else:
        native, why = False, f"no bf16 rule for {device.type} devices"
    resolved = "bf16" if requested == "bf16" or native else "fp32"
    key = (requested, device.type, hardware)
    if key not in _announced:
        _announced.add(key)
        if requested == "auto":
            logger.info("precision auto -> %s on %s: %s", resolved, device.type, why)
        elif not native and device.type == "cpu":
            logger.warning(
                "precision bf16 on a CPU without native bf16 - %s - so autocast emulates it, which is slow: %s. "
                "Use precision 'auto' (or 'fp32') on this CPU.",
                why,
                BF16_SLOWDOWN,
            )
        elif not native:
            logger.warning("precision bf16 on %s although %s; use precision 'auto'.", device.type, why)
    return resolved
