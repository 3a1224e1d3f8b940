"""``python -m tests.faults``: run the fault cases, print one line per case and the summary."""

from __future__ import annotations

import sys

from tests.faults import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
