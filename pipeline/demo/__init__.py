"""The embedded demo: a cohort built from the MNI152 template, then the whole chain on it."""

from __future__ import annotations

__all__: list[str] = []
