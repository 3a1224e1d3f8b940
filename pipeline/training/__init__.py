"""Training: ignite engines, handlers, checkpoints, optimisers, losses, run records and the three tasks.

The tasks are denoising (:mod:`.denoise`), fine-tuning the encoder as a classifier (:mod:`.classify`) and
distillation (:mod:`.distill`).
"""

from __future__ import annotations

__all__: list[str] = []
