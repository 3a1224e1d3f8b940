"""``python -m benchmarks.real_scans``: see the package docstring."""

from __future__ import annotations

from benchmarks.real_scans.cli import main

main()
