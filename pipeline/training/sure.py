"""Moved to :mod:`pipeline.evaluation.sure` (the guard and adaptation use it); old imports keep working."""

from __future__ import annotations

from pipeline.evaluation import sure as _moved
from pipeline.evaluation.sure import *  # noqa: F403

__all__ = list(_moved.__all__)
