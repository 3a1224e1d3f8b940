"""Moved to :mod:`pipeline.runtime.card_schema` (training and inference use it); old imports keep working."""

from __future__ import annotations

from pipeline.runtime import card_schema as _moved
from pipeline.runtime.card_schema import *  # noqa: F403

__all__ = list(_moved.__all__)
