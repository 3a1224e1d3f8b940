"""Inference on new scans: collect a folder's scans, run a trained network, write results in the scan's space."""

from __future__ import annotations

__all__: list[str] = []
