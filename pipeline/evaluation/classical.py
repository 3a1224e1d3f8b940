"""Classical 3-D denoisers, the baselines a learned denoiser must beat, with their free parameter tuned on data.

Each :class:`ClassicalDenoiser` maps a noisy volume ``(H, W, D)`` (any float scale; the demo and the benchmarks use
the clean scan's robust-maximum scale, where the 99.5th percentile of the brain is 1) to a denoised one of the same
shape, and has one free parameter chosen from a small grid by :func:`tune` on *tuning* volumes (never the ones that
are scored):

=================  =======================================================================  ========================
name               what it does                                                             parameter (grid)
=================  =======================================================================  ========================
``gaussian``       ``scipy.ndimage.gaussian_filter``                                        sigma in voxels
``median``         ``scipy.ndimage.median_filter``, cubic window                            window edge in voxels
``curvature_flow`` SimpleITK ``CurvatureFlow`` (time step 0.0625)                           iterations
``tv``             scikit-image ``denoise_tv_chambolle``                                    weight
``nl_means``       scikit-image ``denoise_nl_means`` (fast mode, 5^3 patches, 7^3 search);  ``h`` / estimated sigma
                   the noise sigma is estimated blind from the noisy volume
                   (``skimage.restoration.estimate_sigma``), as a user without the clean
                   scan would
``bm4d``           the optional ``bm4d`` package (non-commercial licence, never required),  none
                   ``sigma_psd`` = the blind sigma estimate
=================  =======================================================================  ========================

The grids span the optima of the 1 mm template and of the 2 mm demo cohort (where the best Gaussian sigma is about 0.5
voxel and the best non-local-means ``h`` about 0.6 sigma); non-local means uses the fastest and best patch settings
of three tried on a 64^3 crop. Tuning maximises the PSNR inside the brain mask
(:func:`pipeline.evaluation.metrics.masked_psnr`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.evaluation.metrics import masked_psnr

__all__ = [
    "CLASSICAL_DENOISERS",
    "OUTPUT_FLOOR",
    "ClassicalDenoiser",
    "bm4d_available",
    "estimate_noise_sigma",
    "get_denoiser",
    "tune",
]

logger = logging.getLogger(__name__)

#: Denoised intensities below this are set to it (``inference.yaml``'s ``output_min``): magnitude MRI and PET are never
#: negative, so every method is compared with the same floor.
OUTPUT_FLOOR: float | None = 0.0


def _as_volume(volume: Any) -> np.ndarray:
    array = np.asarray(volume, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"volume must be a 3-D array (H, W, D), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("volume must be finite (it holds NaN or inf voxels)")
    return array


def estimate_noise_sigma(volume: np.ndarray) -> float:
    """Blind estimate of the noise standard deviation (wavelet MAD, ``skimage.restoration.estimate_sigma``).

    Args:
        volume: noisy volume ``(H, W, D)``.

    Returns:
        The estimate, on the volume's own scale.
    """
    from skimage.restoration import estimate_sigma

    return float(estimate_sigma(_as_volume(volume)))


def _gaussian(noisy: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(noisy, sigma=float(sigma))


def _median(noisy: np.ndarray, size: int) -> np.ndarray:
    from scipy.ndimage import median_filter

    return median_filter(noisy, size=int(size))


def _curvature_flow(noisy: np.ndarray, iterations: int) -> np.ndarray:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(noisy)
    return sitk.GetArrayFromImage(sitk.CurvatureFlow(image, timeStep=0.0625, numberOfIterations=int(iterations)))


def _tv(noisy: np.ndarray, weight: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(noisy, weight=float(weight))


def _nl_means(noisy: np.ndarray, h_factor: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    sigma = estimate_noise_sigma(noisy)
    return denoise_nl_means(
        noisy, h=float(h_factor) * sigma, sigma=sigma, patch_size=5, patch_distance=3, fast_mode=True, channel_axis=None
    )


def _bm4d(noisy: np.ndarray, _unused: Any) -> np.ndarray:
    import bm4d

    return np.asarray(bm4d.bm4d(noisy, sigma_psd=estimate_noise_sigma(noisy)))


def bm4d_available() -> bool:
    """Whether the optional ``bm4d`` package (non-commercial licence) is importable.

    Returns:
        True when ``import bm4d`` works.
    """
    try:
        import bm4d  # noqa: F401
    except ImportError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class ClassicalDenoiser:
    """A classical denoiser with one free parameter.

    Attributes:
        name: short name (``gaussian``, ``median``...).
        title: human-readable name for tables.
        fn: ``fn(noisy, param) -> denoised`` on float32 ``(H, W, D)`` arrays.
        grid: candidate parameter values, best first on ties; one value means nothing to tune.
        param: what the parameter is (for tables).
        quick_grid: a shorter grid for smoke runs (empty: use ``grid``).
    """

    name: str
    title: str
    fn: Callable[[np.ndarray, Any], np.ndarray]
    grid: tuple[Any, ...]
    param: str
    quick_grid: tuple[Any, ...] = ()

    def __call__(self, volume: Any, param: Any = None, floor: float | None = OUTPUT_FLOOR) -> np.ndarray:
        """Denoise one volume.

        Args:
            volume: noisy volume ``(H, W, D)``, finite.
            param: the parameter; ``None`` takes the grid's first value when the grid has one value.
            floor: outputs below it are set to it, as ``inference.yaml``'s ``output_min`` does to the network's, so
                the two are compared alike; ``None`` keeps them.

        Returns:
            The denoised volume, float32, same shape.

        Raises:
            ValueError: for a volume that is not 3-D or not finite, or ``param=None`` with a grid to choose from.
        """
        array = _as_volume(volume)
        if param is None:
            if len(self.grid) != 1:
                raise ValueError(f"param is required for {self.name} (tune it, or pick one of {list(self.grid)})")
            param = self.grid[0]
        denoised = np.asarray(self.fn(array, param), dtype=np.float32)
        return denoised if floor is None else np.maximum(denoised, floor)

    def grid_for(self, quick: bool = False) -> tuple[Any, ...]:
        """The candidate parameters (``quick_grid`` when ``quick`` and it is set).

        Args:
            quick: prefer the short grid.

        Returns:
            The grid.
        """
        return self.quick_grid if quick and self.quick_grid else self.grid


CLASSICAL_DENOISERS: dict[str, ClassicalDenoiser] = {
    d.name: d
    for d in (
        ClassicalDenoiser(
            "gaussian",
            "Gaussian filter",
            _gaussian,
            (0.3, 0.4, 0.5, 0.65, 0.8, 1.0, 1.25),
            "sigma (voxels)",
            (0.5, 1.0),
        ),
        ClassicalDenoiser("median", "Median filter", _median, (3, 5), "window (voxels)", (3,)),
        ClassicalDenoiser(
            "curvature_flow", "Curvature flow (SimpleITK)", _curvature_flow, (1, 2, 3, 6, 12), "iterations", (3,)
        ),
        ClassicalDenoiser("tv", "Total variation", _tv, (0.01, 0.02, 0.03, 0.05, 0.08, 0.12), "weight", (0.03, 0.08)),
        ClassicalDenoiser(
            "nl_means",
            "Non-local means (scikit-image)",
            _nl_means,
            (0.4, 0.5, 0.6, 0.8, 1.0),
            "h / estimated sigma",
            (0.6, 0.8),
        ),
        ClassicalDenoiser("bm4d", "BM4D (optional bm4d package)", _bm4d, (None,), "sigma = estimated sigma"),
    )
}


def get_denoiser(name: str) -> ClassicalDenoiser:
    """Look a classical denoiser up by name.

    Args:
        name: one of :data:`CLASSICAL_DENOISERS`.

    Returns:
        The denoiser.

    Raises:
        ValueError: for an unknown name, or ``bm4d`` without its optional package.
    """
    if name not in CLASSICAL_DENOISERS:
        raise ValueError(f"name must be one of {list(CLASSICAL_DENOISERS)}, got {name!r}")
    if name == "bm4d" and not bm4d_available():
        raise ValueError("bm4d needs the optional 'bm4d' package (non-commercial licence): pip install -e '.[bm4d]'")
    return CLASSICAL_DENOISERS[name]


def tune(
    denoiser: ClassicalDenoiser | str,
    volumes: Sequence[Mapping[str, np.ndarray]],
    quick: bool = False,
    data_range: float = 1.0,
) -> tuple[Any, dict[Any, float]]:
    """Choose the parameter with the best mean masked PSNR over tuning volumes (never the scored ones).

    Args:
        denoiser: the denoiser or its name.
        volumes: dicts with ``noisy``, ``clean`` and ``mask`` arrays ``(H, W, D)``.
        quick: search ``quick_grid``.
        data_range: the intensity range of the volumes.

    Returns:
        ``(best parameter, {parameter: mean PSNR in dB})``; the scores are empty when there is nothing to tune.

    Raises:
        ValueError: for no tuning volumes, or volumes without the three keys.
    """
    method = get_denoiser(denoiser) if isinstance(denoiser, str) else denoiser
    if not volumes:
        raise ValueError("volumes must hold at least one tuning volume")
    for case in volumes:
        missing = {"noisy", "clean", "mask"} - set(case)
        if missing:
            raise ValueError(f"each tuning volume needs keys noisy, clean, mask; missing {sorted(missing)}")
    grid = method.grid_for(quick)
    if len(grid) == 1:
        return grid[0], {}
    scores = {
        p: float(np.mean([masked_psnr(method(c["noisy"], p), c["clean"], c["mask"], data_range) for c in volumes]))
        for p in grid
    }
    best = max(grid, key=lambda p: scores[p])
    logger.info(
        "%s: %s = %s (tuning PSNR %s)",
        method.name,
        method.param,
        best,
        ", ".join(f"{p}: {s:.2f}" for p, s in scores.items()),
    )
    return best, scores
