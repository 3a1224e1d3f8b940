"""Evaluation: masked image-quality and classification metrics, classical denoisers, the quality report."""

from __future__ import annotations

__all__: list[str] = []
