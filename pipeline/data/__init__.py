"""Data: datalists of scan folders, subject splits and the workflows' choice of them, the demo cohort, noisy copies."""

from __future__ import annotations

__all__: list[str] = []
