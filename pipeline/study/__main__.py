"""``python -m pipeline.study``: see :mod:`pipeline.study.run`."""

from __future__ import annotations

from pipeline.study.run import main

__all__: list[str] = []

if __name__ == "__main__":
    raise SystemExit(main())
