"""Networks: the residual 3D U-Net (ResUnet3D), pretrained-weight import and a registry beside MONAI's nets."""

from __future__ import annotations

__all__: list[str] = []
