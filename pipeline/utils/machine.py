"""What a recorded figure was measured on: date, CPU (model, flags, torch's kernels), load, package versions."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from typing import Any

__all__ = ["machine_info"]


def machine_info() -> dict[str, Any]:
    """Describe the machine and software a figure was measured on (every results JSON carries it).

    Returns:
        The UTC date, the CPU's model name, description and AVX-512/bf16/AMX flags, torch's CPU kernels, whether bf16
        is native, logical CPUs, torch threads, the 1-minute load average when the run started (other jobs on a
        shared machine slow every timing), the GPU if any, and the versions of Python, torch, MONAI and NumPy.
    """
    import monai
    import numpy as np
    import torch

    from pipeline.utils.precision import detect_hardware

    hardware = detect_hardware()
    return {
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "cpu": hardware.cpu_model,
        "cpu_description": hardware.describe_cpu(),
        "cpu_flags": sorted(hardware.cpu_flags),
        "torch_cpu_kernels": hardware.cpu_kernels,
        "native_bf16": hardware.native_cpu_bf16,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
