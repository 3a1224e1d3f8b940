"""The pipeline: datasets, demo cohort, ignite engines, inference, report and command line."""

from __future__ import annotations

__all__: list[str] = []
