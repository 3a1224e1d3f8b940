"""The ResUnet3D configurations the project ships, by name: one definition each, for the bundle, demo and benchmarks.

* ``small``: the denoiser that learns from scratch within CPU minutes (the demo's, the bundle's default and the
  ready model's): depth 10, three levels, 16-128 channels, a full-resolution 3^3 stem, a residual output (the network
  predicts the noise) and instance norm; 0.39 M trainable parameters.
* ``resunet18``: the research notes' ResUnet3D-18 (3D-ResNets-PyTorch / MedicalNet ResNet-18 encoder: 64-512
  channels, 7^3 stride-2 stem, four levels, no residual output, batch norm), the network MedicalNet and 3D-ResNets
  weights load into; 47.5 M trainable parameters.

Each preset holds the ``ResUnet3D`` arguments that differ between them; ``ResUnet3D(**preset("small"))`` builds one.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["PRESETS", "preset"]

#: ``{name: ResUnet3D arguments}``; use :func:`preset` for a copy with overrides.
PRESETS: dict[str, dict[str, Any]] = {
    "small": {
        "model_depth": 10,
        "levels": 3,
        "block_inplanes": [16, 32, 64, 128],
        "conv1_t_stride": 1,
        "conv1_t_size": 3,
        "residual_output": True,
        "norm": "instance",
    },
    "resunet18": {
        "model_depth": 18,
        "levels": 4,
        "block_inplanes": [64, 128, 256, 512],
        "conv1_t_stride": 2,
        "conv1_t_size": 7,
        "residual_output": False,
        "norm": "batch",
    },
}


def preset(name: str, **overrides: Any) -> dict[str, Any]:
    """The ``ResUnet3D`` arguments of a shipped network, as a new dict.

    Args:
        name: a key of :data:`PRESETS` (``"small"`` or ``"resunet18"``).
        **overrides: arguments replacing the preset's (or added to them), e.g. ``norm="batch"``.

    Returns:
        A deep copy of the preset with ``overrides`` applied.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown network preset {name!r}; the presets are {sorted(PRESETS)}.")
    return {**copy.deepcopy(PRESETS[name]), **overrides}
