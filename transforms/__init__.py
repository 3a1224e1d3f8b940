"""MONAI-style array and dictionary transforms: loading, normalisation, cropping and noise."""

from __future__ import annotations

__all__: list[str] = []
