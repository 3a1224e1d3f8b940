"""Training: ignite engines, handlers, checkpoints, optimisers, losses, run records and the four tasks.

The tasks are denoising (:mod:`.denoise`), fine-tuning the encoder as a classifier (:mod:`.classify`),
distillation (:mod:`.distill`) and self-supervised site adaptation (:mod:`.adapt`); all four train through one
:func:`.fit.fit` with one :class:`.fit.FitSettings`. :mod:`.bundle_engine` holds the handlers the bundle's training
configs share.
"""

from __future__ import annotations

__all__: list[str] = []
