"""Moved to :mod:`pipeline.runtime.model_card` (training and inference use it); old imports keep working."""

from __future__ import annotations

from pipeline.runtime import model_card as _moved
from pipeline.runtime.model_card import *  # noqa: F403

__all__ = list(_moved.__all__)
