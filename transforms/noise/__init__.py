"""Noise models for denoising: Gaussian (0-255 scale), Poisson, Rician and low-dose PET, array + dictionary pairs.

Every model is stated against a *reference intensity* ``ref`` (argument ``reference``): the intensity that plays
the part of 255 on the notes' 8-bit scale, or of "1" on the normalised ``[0, 1]`` scale. The default
``reference=1.0`` means the image is already normalised (``ScalePercentile`` maps the 99.5th percentile of the
non-zero voxels to 1), so ``gaussian15`` adds noise of standard deviation ``15/255`` of that normalised range.
``reference="robust"`` computes the same statistic from the image itself (for noising raw scans on disk),
``reference="max"`` uses the image maximum, and a number fixes it.

Models, for a clean voxel ``x`` (``ref`` as above, ``N(0, 1)`` a standard normal draw per voxel):

* Gaussian: ``y = x + (level / 255) * ref * N(0, 1)``.
* Rician (magnitude MRI): ``y = sqrt((x + s * N1)^2 + (s * N2)^2)`` with ``s = (level / 255) * ref`` and two
  independent normal draws, i.e. Gaussian noise of std ``s`` in both the real and imaginary channel.
* Poisson: ``y = ref * Poisson(scale * x / ref) / scale``, so ``E[y] = x`` and ``Var[y] = x * ref / scale``
  (``variance = mean / scale`` on the normalised scale); ``scale`` is the photon count of a voxel at ``ref``.
* Low-dose PET: the full-dose image is read as a count map with ``counts`` events per voxel at ``ref``; a scan at
  dose fraction ``f`` keeps each event with probability ``f`` (binomial thinning, which is exactly how a
  low-dose acquisition is simulated from list-mode data) and is rescaled to full-dose units:
  ``y = ref * Binomial(n, f) / (f * counts)`` with ``n`` the full-dose count (``counts * x / ref``, rounded
  stochastically so ``E[n]`` is exact). ``E[y] = x``; ``Var[y] = x * ref * (1 - f) / (f * counts)`` plus the
  rounding term. The model works in image space; it does not reproduce the spatially correlated noise texture
  that reconstruction from thinned sinograms gives.

Random levels: every level argument takes a number or a ``(low, high)`` pair drawn uniformly per call.
Deterministic mode: the dictionary transforms take ``seed``; each item is then noised with a generator seeded by
``item_seed(seed, identifier)`` where the identifier is the item's file name (or ``id_key``), so the noise of a
validation or test scan is the same in every run and in any iteration order.

Modules: :mod:`transforms.noise.array` (the array transforms), :mod:`transforms.noise.dictionary` (their dictionary
versions and :func:`item_seed`), :mod:`transforms.noise.factory` (:func:`make_noise` and name parsing).
"""

from __future__ import annotations

from transforms.noise.array import RandGaussianNoise255, RandLowDose, RandPoissonNoise, RandRicianNoise
from transforms.noise.dictionary import (
    RandGaussianNoise255d,
    RandLowDosed,
    RandPoissonNoised,
    RandRicianNoised,
    item_seed,
)
from transforms.noise.factory import NOISE_NAMES, make_noise, parse_noise_name

__all__ = [
    "NOISE_NAMES",
    "RandGaussianNoise255",
    "RandGaussianNoise255d",
    "RandLowDose",
    "RandLowDosed",
    "RandPoissonNoise",
    "RandPoissonNoised",
    "RandRicianNoise",
    "RandRicianNoised",
    "item_seed",
    "make_noise",
    "parse_noise_name",
]
