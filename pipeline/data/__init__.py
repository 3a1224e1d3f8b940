"""Data: datalists of scan folders, subject splits, the demo cohort and noisy copies of clean scans."""

from __future__ import annotations

__all__: list[str] = []
