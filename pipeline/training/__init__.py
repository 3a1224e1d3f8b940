"""Training: ignite engines, handlers, checkpoints, optimisers, losses, run records and the three tasks.

The tasks are denoising (:mod:`.denoise`), fine-tuning the encoder as a classifier (:mod:`.classify`) and
distillation (:mod:`.distill`); all three train through one :func:`.fit.fit` with one :class:`.fit.FitSettings`.
"""

from __future__ import annotations

__all__: list[str] = []
