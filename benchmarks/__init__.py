"""Benchmark scripts: side-by-side speed and quality figures, each runnable as ``python -m benchmarks.<name>``."""

from __future__ import annotations

__all__: list[str] = []
