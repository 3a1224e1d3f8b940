"""Small helpers every stage uses: atomic file writes and seeding."""

from __future__ import annotations

__all__: list[str] = []
