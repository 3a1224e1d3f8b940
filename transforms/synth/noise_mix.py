"""The noise step of the generator: a random noise type and level per item, from :mod:`transforms.noise`."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor, get_track_meta
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from transforms.noise import RandGaussianNoise255, RandPoissonNoise, RandRicianNoise
from transforms.synth.common import check_prob, is_number

__all__ = ["RandNoiseMix", "RandNoiseMixd"]


class RandNoiseMix(RandomizableTransform):
    """Noise of a random type and level: Gaussian, Rician or Poisson, one drawn per call (``transforms.noise``).

    The type is drawn with probabilities proportional to ``weights`` among the types whose range is not ``None``;
    its level is uniform in its range. Levels are in :func:`transforms.noise.make_noise`'s units against
    ``reference``: Gaussian and Rician standard deviation on the 0-255 scale, Poisson photon count at the reference
    intensity (``Var = mean / scale``).

    Args:
        gaussian: Gaussian level range (0-255 scale), a number, or ``None`` to leave the type out.
        rician: Rician level range (0-255 scale), a number, or ``None``.
        poisson: Poisson photon-count range, a number, or ``None``.
        weights: relative probabilities of (Gaussian, Rician, Poisson).
        reference: intensity playing the part of 255 / 1 (see ``transforms.noise``).
        prob: probability of adding noise.

    Raises:
        ValueError: no type enabled, a range out of bounds, or bad weights (the message names the parameter).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]
    TYPES: tuple[str, ...] = ("gaussian", "rician", "poisson")

    def __init__(
        self,
        gaussian: float | Sequence[float] | None = (3.0, 30.0),
        rician: float | Sequence[float] | None = (3.0, 30.0),
        poisson: float | Sequence[float] | None = (50.0, 2000.0),
        weights: Sequence[float] = (1.0, 1.0, 1.0),
        reference: float | str = 1.0,
        prob: float = 1.0,
    ) -> None:
        RandomizableTransform.__init__(self, check_prob(prob))
        if isinstance(weights, str) or len(weights) != 3 or not all(is_number(w) and w >= 0 for w in weights):
            raise ValueError(
                f"weights must be three non-negative numbers (gaussian, rician, poisson), got {weights!r}."
            )
        self.models: dict[str, Any] = {}
        if gaussian is not None:
            self.models["gaussian"] = RandGaussianNoise255(gaussian, 1.0, reference)
        if rician is not None:
            self.models["rician"] = RandRicianNoise(rician, 1.0, reference)
        if poisson is not None:
            self.models["poisson"] = RandPoissonNoise(poisson, 1.0, reference)
        self.weights = np.array([float(w) for t, w in zip(self.TYPES, weights) if t in self.models])
        if not self.models or self.weights.sum() <= 0:
            raise ValueError("at least one of gaussian, rician, poisson must be enabled with a positive weight.")
        self.weights = self.weights / self.weights.sum()
        self.kind = next(iter(self.models))

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandNoiseMix:
        """Seed the type draw and every inner noise model; returns ``self``."""
        super().set_random_state(seed, state)
        for model in self.models.values():
            model.set_random_state(seed, state)
        return self

    @property
    def level(self) -> float:
        """The level of the last draw, in the drawn type's units."""
        return self.models[self.kind].level

    def randomize(self, img: NdarrayOrTensor | None = None) -> None:
        """Flip the coin, draw the type, then its level (and, given ``img``, its noise field), all from ``self.R``."""
        super().randomize(None)
        if not self._do_transform:
            return
        kinds = list(self.models)
        self.kind = kinds[int(self.R.choice(len(kinds), p=self.weights))]
        model = self.models[self.kind]
        model.R = self.R
        model.randomize(img)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Return a noisy copy of ``img``; the input is never modified.

        Args:
            img: image, channel first; numpy, torch or MetaTensor (Poisson needs non-negative values).
            randomize: draw a new type, level and field; ``False`` reuses the last draws.

        Returns:
            The noisy float32 image, with the input's metadata; ``meta["synth_noise"]`` names type and level.
        """
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        if randomize:
            self.randomize(img_t)
        if not self._do_transform:
            return convert_to_dst_type(img_t, img_t, dtype=torch.float32)[0]
        out = self.models[self.kind](img_t, randomize=False)
        if isinstance(out, MetaTensor):
            out.meta["synth_noise"] = f"{self.kind} {self.level:.4g}"
        return out


class RandNoiseMixd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandNoiseMix`: the keys share the type and level, each gets its own field.

    Args:
        keys: keys to noise, normally ``"image"`` (the clean ``label`` keeps its copy).
        gaussian, rician, poisson, weights, reference: as the array class.
        prob: probability of noising an item.
        allow_missing_keys: skip absent keys instead of raising.
    """

    backend = RandNoiseMix.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        gaussian: float | Sequence[float] | None = (3.0, 30.0),
        rician: float | Sequence[float] | None = (3.0, 30.0),
        poisson: float | Sequence[float] | None = (50.0, 2000.0),
        weights: Sequence[float] = (1.0, 1.0, 1.0),
        reference: float | str = 1.0,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, check_prob(prob))
        self.noise = RandNoiseMix(gaussian, rician, poisson, weights, reference, prob=1.0)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandNoiseMixd:
        """Seed this transform and its inner array transform; returns ``self``."""
        super().set_random_state(seed, state)
        self.noise.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Noise every present key (one type and level per item); returns a new dictionary."""
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        self.noise.randomize(None)
        model = self.noise.models[self.noise.kind]
        for key in self.key_iterator(d):
            model.randomize_field(d[key])
            d[key] = self.noise(d[key], randomize=False)
        return d
