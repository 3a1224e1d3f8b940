"""The noise models as MONAI dictionary transforms, and the per-item seeds of their deterministic mode.

Each dictionary transform flips one coin and draws one level per item, then gives every key its own noise field.
With ``seed`` set, each item is noised by a generator seeded by :func:`item_seed` of the base seed and the item's
file name (or ``id_key``), so the noise of a validation or test scan is the same in every run and in any order.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor, get_track_meta
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_tensor

from transforms.noise.array import (
    RandGaussianNoise255,
    RandLowDose,
    RandNoiseBase,
    RandPoissonNoise,
    RandRicianNoise,
    Reference,
    check_prob,
)

__all__ = [
    "RandGaussianNoise255d",
    "RandLowDosed",
    "RandNoiseDictBase",
    "RandPoissonNoised",
    "RandRicianNoised",
    "item_seed",
]


def item_seed(base_seed: int, identifier: str) -> int:
    """Derive a stable per-item seed from a base seed and an item identifier.

    The identifier's base name is hashed with CRC-32 (stable across Python runs, unlike ``hash``) and mixed with
    the base seed by ``numpy.random.SeedSequence``, so nearby base seeds or similar names give unrelated streams.

    Args:
        base_seed: non-negative integer, e.g. the experiment seed.
        identifier: the item's file path or subject ID; only its base name is used, so moving the data folder
            does not change the noise.

    Returns:
        A seed in ``[0, 2**32)`` for ``numpy.random.RandomState``.

    Raises:
        ValueError: ``base_seed`` is negative or not an integer.
    """
    if isinstance(base_seed, bool) or not isinstance(base_seed, (int, np.integer)) or base_seed < 0:
        raise ValueError(f"base_seed must be a non-negative integer, got {base_seed!r}.")
    name = os.path.basename(os.fspath(identifier).rstrip("/\\"))
    digest = zlib.crc32(name.encode("utf-8"))
    return int(np.random.SeedSequence([int(base_seed), digest]).generate_state(1)[0])


class RandNoiseDictBase(RandomizableTransform, MapTransform):
    """Dictionary twin: one coin and one level per item, an independent noise field per key, optional seeding."""

    backend = RandNoiseBase.backend

    def __init__(
        self,
        keys: KeysCollection,
        noise: RandNoiseBase,
        prob: float,
        allow_missing_keys: bool,
        seed: int | None,
        id_key: str | None,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, check_prob(prob))
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f"seed must be None or a non-negative integer, got {seed!r}.")
        self.noise = noise
        self.seed = seed
        self.id_key = id_key

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandNoiseDictBase:
        """Seed this transform and its inner array transform; returns ``self``."""
        super().set_random_state(seed, state)
        self.noise.set_random_state(seed, state)
        return self

    def identifier(self, data: Mapping[Hashable, Any]) -> str:
        """The name that seeds an item in deterministic mode.

        ``data[id_key]`` when ``id_key`` is set; otherwise the ``filename_or_obj`` of the first key's MetaTensor,
        then ``data["subject"]``.

        Raises:
            ValueError: no identifier can be found.
        """
        if self.id_key is not None:
            if self.id_key not in data:
                raise ValueError(f"id_key {self.id_key!r} is not in the item (keys: {sorted(map(str, data))}).")
            return str(data[self.id_key])
        for key in self.key_iterator(dict(data)):
            value = data[key]
            name = value.meta.get("filename_or_obj") if isinstance(value, MetaTensor) else None
            if name:
                return str(name)
        if "subject" in data:
            return str(data["subject"])
        raise ValueError(
            f"{type(self).__name__}(seed=...) needs an identifier per item: pass id_key=... or load the image as a "
            "MetaTensor that carries its file name."
        )

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Noise every present key of ``data``; other keys (e.g. the clean ``label``) are left as they are.

        Args:
            data: item dictionary; the keyed images may be numpy, torch or MetaTensor, any shape.

        Returns:
            A new dictionary (the input's arrays are never modified).
        """
        d = dict(data)
        if self.seed is not None:
            self.set_random_state(seed=item_seed(self.seed, self.identifier(d)))
        self.randomize(None)
        if not self._do_transform:
            for key in self.key_iterator(d):
                d[key] = convert_to_tensor(d[key], track_meta=get_track_meta())
            return d
        self.noise.randomize(None)
        for key in self.key_iterator(d):
            self.noise.randomize_field(d[key])
            d[key] = self.noise(d[key], randomize=False)
        return d


class RandGaussianNoise255d(RandNoiseDictBase):
    """Dictionary version of :class:`RandGaussianNoise255`.

    The keys share one coin flip and one level per item; each key gets its own noise field.

    Args:
        keys: keys to noise, normally ``"image"`` only (the clean ``label`` keeps its copy).
        level: std on the 0-255 scale, or a ``(low, high)`` range drawn per item.
        prob: probability of noising an item.
        reference: intensity that stands for 255 (see :class:`RandGaussianNoise255`).
        dtype: output dtype; ``None`` keeps the input's.
        seed: ``None`` for ordinary augmentation; an integer for deterministic per-item noise (``item_seed``).
        id_key: key whose value identifies an item in deterministic mode (default: the image's file name).
        allow_missing_keys: skip absent keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        level: float | Sequence[float] = 15.0,
        prob: float = 1.0,
        reference: Reference = 1.0,
        dtype: DtypeLike = np.float32,
        seed: int | None = None,
        id_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        noise = RandGaussianNoise255(level=level, prob=1.0, reference=reference, dtype=dtype)
        super().__init__(keys, noise, prob, allow_missing_keys, seed, id_key)


class RandRicianNoised(RandNoiseDictBase):
    """Dictionary version of :class:`RandRicianNoise`; keys share the coin and the level, not the noise field.

    Args:
        keys: keys to noise.
        level: std of each Gaussian channel on the 0-255 scale, or a ``(low, high)`` range.
        prob: probability of noising an item.
        reference: intensity that stands for 255.
        dtype: output dtype; ``None`` keeps the input's.
        seed: ``None``, or an integer for deterministic per-item noise.
        id_key: key identifying an item in deterministic mode.
        allow_missing_keys: skip absent keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        level: float | Sequence[float] = 15.0,
        prob: float = 1.0,
        reference: Reference = 1.0,
        dtype: DtypeLike = np.float32,
        seed: int | None = None,
        id_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        noise = RandRicianNoise(level=level, prob=1.0, reference=reference, dtype=dtype)
        super().__init__(keys, noise, prob, allow_missing_keys, seed, id_key)


class RandPoissonNoised(RandNoiseDictBase):
    """Dictionary version of :class:`RandPoissonNoise`; keys share the coin and the scale, not the draws.

    Args:
        keys: keys to noise.
        scale: photon count at the reference intensity, or a ``(low, high)`` range.
        prob: probability of noising an item.
        reference: intensity read as ``scale`` photons.
        dtype: output dtype; ``None`` keeps the input's.
        seed: ``None``, or an integer for deterministic per-item noise.
        id_key: key identifying an item in deterministic mode.
        allow_missing_keys: skip absent keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        scale: float | Sequence[float] = 100.0,
        prob: float = 1.0,
        reference: Reference = 1.0,
        dtype: DtypeLike = np.float32,
        seed: int | None = None,
        id_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        noise = RandPoissonNoise(scale=scale, prob=1.0, reference=reference, dtype=dtype)
        super().__init__(keys, noise, prob, allow_missing_keys, seed, id_key)


class RandLowDosed(RandNoiseDictBase):
    """Dictionary version of :class:`RandLowDose`; keys share the coin and the dose, not the draws.

    Args:
        keys: keys to noise.
        dose: dose fraction in ``(0, 1]``, or a ``(low, high)`` range.
        counts: full-dose events per voxel at the reference intensity.
        prob: probability of simulating a low dose for an item.
        reference: intensity read as ``counts`` events.
        dtype: output dtype; ``None`` keeps the input's.
        seed: ``None``, or an integer for deterministic per-item noise.
        id_key: key identifying an item in deterministic mode.
        allow_missing_keys: skip absent keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        dose: float | Sequence[float] = 0.25,
        counts: float = 200.0,
        prob: float = 1.0,
        reference: Reference = 1.0,
        dtype: DtypeLike = np.float32,
        seed: int | None = None,
        id_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        noise = RandLowDose(dose=dose, counts=counts, prob=1.0, reference=reference, dtype=dtype)
        super().__init__(keys, noise, prob, allow_missing_keys, seed, id_key)
