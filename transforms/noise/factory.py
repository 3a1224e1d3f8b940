"""Noise transforms by name: ``make_noise("gaussian", 15)`` for the notes' ``gaussian15``, and name parsing."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from monai.config import DtypeLike, KeysCollection

from transforms.noise.array import (
    RandGaussianNoise255,
    RandLowDose,
    RandNoiseBase,
    RandPoissonNoise,
    RandRicianNoise,
    Reference,
)
from transforms.noise.dictionary import (
    RandGaussianNoise255d,
    RandLowDosed,
    RandNoiseDictBase,
    RandPoissonNoised,
    RandRicianNoised,
)

__all__ = ["NOISE_NAMES", "make_noise", "parse_noise_name"]

NOISE_NAMES: tuple[str, ...] = ("gaussian", "poisson", "rician", "lowdose")
"""The names :func:`make_noise` accepts."""

_NAME_RE = re.compile(r"^(gaussian|poisson|rician|lowdose)[_-]?(\d+(?:\.\d+)?)?$")


def parse_noise_name(text: str) -> tuple[str, float | None]:
    """Split a folder-style noise name such as ``"gaussian15"`` into ``("gaussian", 15.0)``.

    Args:
        text: ``<name>[<level>]`` with ``name`` in :data:`NOISE_NAMES`; ``"poisson"`` gives ``("poisson", None)``.

    Returns:
        The noise name and the level, or ``None`` when the text carries no level.

    Raises:
        ValueError: unknown name.
    """
    match = _NAME_RE.match(str(text).strip().lower())
    if not match:
        raise ValueError(f"noise name must be one of {NOISE_NAMES} optionally followed by a level, got {text!r}.")
    return match.group(1), (float(match.group(2)) if match.group(2) else None)


def make_noise(
    name: str,
    level: float | Sequence[float],
    keys: KeysCollection | None = ("image",),
    prob: float = 1.0,
    reference: Reference = 1.0,
    seed: int | None = None,
    id_key: str | None = None,
    counts: float = 200.0,
    dtype: DtypeLike = np.float32,
    allow_missing_keys: bool = False,
) -> RandNoiseDictBase | RandNoiseBase:
    """Build a noise transform by name, e.g. ``make_noise("gaussian", 15)`` for the notes' ``gaussian15``.

    What ``level`` means depends on the model:

    ============ ========================================================= ===============
    name         level                                                     allowed
    ============ ========================================================= ===============
    ``gaussian`` std on the 0-255 scale of the reference intensity         ``[0, 255]``
    ``rician``   std of each complex channel on the 0-255 scale            ``[0, 255]``
    ``poisson``  photon count at the reference intensity (var = mean/level) ``(0, 1e9]``
    ``lowdose``  dose fraction of the full-dose scan (``counts`` at full)   ``(0, 1]``
    ============ ========================================================= ===============

    Args:
        name: one of :data:`NOISE_NAMES`.
        level: a number, or a ``(low, high)`` range drawn uniformly per item (training augmentation).
        keys: keys to noise; ``None`` returns the array transform instead of the dictionary one.
        prob: probability of noising an item.
        reference: intensity that stands for 255 / 1 (see :mod:`transforms.noise`).
        seed: ``None`` for random noise, or a base seed for deterministic per-item noise (dictionary only).
        id_key: key identifying an item in deterministic mode (default: the image's file name).
        counts: full-dose events per voxel for ``lowdose``.
        dtype: output dtype.
        allow_missing_keys: skip absent keys instead of raising.

    Returns:
        ``RandGaussianNoise255d``, ``RandPoissonNoised``, ``RandRicianNoised`` or ``RandLowDosed`` (or the array
        class when ``keys`` is ``None``).

    Raises:
        ValueError: unknown ``name``, ``level`` out of the allowed range, or ``seed`` without ``keys``.
    """
    if name not in NOISE_NAMES:
        raise ValueError(f"name must be one of {NOISE_NAMES}, got {name!r}.")
    if keys is None:
        if seed is not None:
            raise ValueError("seed (per-item noise) needs keys; seed array transforms with set_random_state.")
        if name == "gaussian":
            return RandGaussianNoise255(level, prob, reference, dtype)
        if name == "rician":
            return RandRicianNoise(level, prob, reference, dtype)
        if name == "poisson":
            return RandPoissonNoise(level, prob, reference, dtype)
        return RandLowDose(level, counts, prob, reference, dtype)
    common = {"prob": prob, "reference": reference, "dtype": dtype, "seed": seed, "id_key": id_key}
    common["allow_missing_keys"] = allow_missing_keys
    if name == "gaussian":
        return RandGaussianNoise255d(keys, level=level, **common)
    if name == "rician":
        return RandRicianNoised(keys, level=level, **common)
    if name == "poisson":
        return RandPoissonNoised(keys, scale=level, **common)
    return RandLowDosed(keys, dose=level, counts=counts, **common)
