"""``python -m pipeline.demo``: build the demo cohort and run the whole chain on it."""

from __future__ import annotations

import sys

from pipeline.demo.run import main

if __name__ == "__main__":
    sys.exit(main())
