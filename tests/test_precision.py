"""``precision: auto`` and the hardware report: simulated CPUs and GPUs, never the machine the suite runs on."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from monai.inferers import SimpleInferer

from pipeline.training.engines import precision_settings
from pipeline.training.handlers import AutocastInferer
from pipeline.utils import precision
from pipeline.utils.precision import NATIVE_BF16_ENV, HardwareReport, detect_hardware, resolve_precision

#: a 2-core AMD EPYC with AVX2 only, as in issue 11
AVX2_EPYC = HardwareReport(
    cpu_model="AMD EPYC 7B12", cpu_kernels="AVX2", cpu_flags=frozenset({"avx2"}), onednn_bf16=False, logical_cpus=2
)
#: an Intel Xeon with AVX-512, AVX512-BF16 and AMX
AMX_XEON = HardwareReport(
    cpu_model="Intel(R) Xeon(R) Platinum 8481C",
    cpu_kernels="AVX512",
    cpu_flags=frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
    onednn_bf16=True,
    logical_cpus=2,
)
#: AVX-512 without bf16 (e.g. Skylake-SP): oneDNN accepts bf16 there, but emulates it
AVX512_ONLY = dataclasses.replace(AMX_XEON, cpu_model="Intel Xeon Gold 6148", cpu_flags=frozenset({"avx2", "avx512f"}))


@pytest.fixture(autouse=True)
def fresh_announcements(monkeypatch):
    """Every test starts with nothing logged yet (the module logs each decision once per process)."""
    monkeypatch.setattr(precision, "_announced", set())
    monkeypatch.delenv(NATIVE_BF16_ENV, raising=False)


@pytest.mark.parametrize(
    ("hardware", "expected"),
    [
        (AVX2_EPYC, "fp32"),
        (AVX512_ONLY, "fp32"),
        (AMX_XEON, "bf16"),
        (dataclasses.replace(AMX_XEON, cpu_flags=frozenset({"avx512f", "avx512_bf16"})), "bf16"),  # Zen 4
        (dataclasses.replace(AMX_XEON, onednn_bf16=None), "bf16"),  # torch does not say: the flags decide
        (dataclasses.replace(AMX_XEON, onednn_bf16=False), "fp32"),  # ONEDNN_MAX_CPU_ISA=AVX2
        (dataclasses.replace(AMX_XEON, cpu_kernels="AVX2"), "fp32"),  # ATEN_CPU_CAPABILITY=avx2
        (dataclasses.replace(AVX2_EPYC, native_bf16_override=True), "bf16"),
        (dataclasses.replace(AMX_XEON, native_bf16_override=False), "fp32"),
    ],
    ids=["avx2", "avx512-no-bf16", "amx", "avx512-bf16", "onednn-silent", "onednn-avx2", "aten-avx2", "env=1", "env=0"],
)
def test_auto_picks_bf16_only_where_the_cpu_computes_it_natively(hardware, expected, caplog):
    with caplog.at_level(logging.INFO, logger="pipeline.utils.precision"):
        assert resolve_precision("auto", "cpu", hardware) == expected
    (record,) = caplog.records  # the choice and its reason, once
    assert record.levelno == logging.INFO and f"precision auto -> {expected} on cpu: " in record.getMessage()
    assert hardware.cpu_bf16_reason() in record.getMessage()


@pytest.mark.parametrize(("cuda_bf16", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_on_a_gpu_follows_its_bf16_support(cuda_bf16, expected):
    gpu = dataclasses.replace(AVX2_EPYC, cuda_device="NVIDIA H100", cuda_bf16=cuda_bf16)  # the CPU does not matter
    assert resolve_precision("auto", "cuda:0", gpu) == expected
    assert resolve_precision("auto", "cpu", gpu) == "fp32"


def test_explicit_precisions_are_kept_and_emulated_bf16_warns_once(caplog):
    with caplog.at_level(logging.INFO, logger="pipeline.utils.precision"):
        assert resolve_precision("fp32", "cpu", AVX2_EPYC) == "fp32"
        assert resolve_precision("bf16", "cpu", AMX_XEON) == "bf16"
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # native bf16: nothing to warn
        assert resolve_precision("bf16", "cpu", AVX2_EPYC) == "bf16"  # the user's choice stands ...
        assert resolve_precision("bf16", torch.device("cpu"), AVX2_EPYC) == "bf16"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # ... with one warning, not one per engine
    assert "without native bf16" in warnings[0] and "39x slower than fp32" in warnings[0] and "'auto'" in warnings[0]
    assert "AVX2" in warnings[0]


def test_bad_precisions_are_refused():
    with pytest.raises(ValueError, match=r"precision must be one of \['auto', 'fp32', 'bf16', 'fp16'\], got 'fp8'"):
        resolve_precision("fp8", "cpu", AMX_XEON)
    with pytest.raises(ValueError, match=r"precision='fp16' needs a CUDA device, got cpu; use 'auto' on the CPU\."):
        resolve_precision("fp16", "cpu", AMX_XEON)
    assert resolve_precision("fp16", "cuda", AMX_XEON) == "fp16"


def test_precision_settings_builds_the_inferer_of_the_resolved_precision():
    base = SimpleInferer()
    assert precision_settings("auto", "cpu", base, hardware=AVX2_EPYC) == (False, base)
    amp, inferer = precision_settings("auto", "cpu", base, hardware=AMX_XEON, training=False)
    assert not amp and isinstance(inferer, AutocastInferer) and inferer.dtype == torch.bfloat16
    assert inferer.output_dtype == torch.float32


def test_the_environment_overrides_the_detected_cpu(monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    assert detect_hardware().native_cpu_bf16 and resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")
    assert not detect_hardware().native_cpu_bf16 and resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setenv(NATIVE_BF16_ENV, "maybe")
    with pytest.raises(ValueError, match=f"{NATIVE_BF16_ENV} must be 1 or 0"):
        detect_hardware()


def test_detected_report_describes_this_cpu():
    report = detect_hardware()
    assert report.cpu_model and report.cpu_kernels and report.logical_cpus >= 1
    assert report.cpu_flags <= {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    text = report.describe_cpu()
    assert text.startswith(report.cpu_model) and f"torch kernels {report.cpu_kernels}" in text
    assert ("native bf16: yes" in text) == report.native_cpu_bf16


def test_cpu_description_names_the_avx512_and_amx_flags():
    assert "AVX2, no AVX-512, no AVX512-BF16, no AMX" in AVX2_EPYC.describe_cpu()
    assert "native bf16: no (the CPU has neither AVX512-BF16 nor AMX-BF16)" in AVX2_EPYC.describe_cpu()
    assert "AVX2, AVX-512, AVX512-BF16, AMX, torch kernels AVX512, native bf16: yes" in AMX_XEON.describe_cpu()
    emulated = dataclasses.replace(AMX_XEON, onednn_bf16=False).describe_cpu()
    assert "native bf16: no (the CPU has amx_bf16/avx512_bf16 but oneDNN does not use it" in emulated
