"""Running a trained network, in training and inference alike: weights, model cards, precision, the classifier.

Both :mod:`pipeline.training` and :mod:`pipeline.inference` import from here, never from each other for these.
"""

from __future__ import annotations

__all__: list[str] = []
