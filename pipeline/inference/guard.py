"""The inference guard: SURE picks, per scan, what to write (network, blend, filter, their combination or input).

A denoiser trained at one noise level smooths every scan as if it held that level: below it, the output is worse than
the noisy input. The guard needs no clean reference to see this. For additive white Gaussian noise of standard
deviation ``sigma`` (estimated blind, :func:`transforms.noise_level.estimate_noise`) Stein's unbiased risk estimate
(:mod:`pipeline.evaluation.sure`) gives the mean squared error of any weakly differentiable output ``g(y)``:

    SURE(g) = mean |g(y) - y|^2 - sigma^2 + 2 sigma^2 mean div g(y).

The guard scores a small family: ``g = y + sum_k w_k (f_k(y) - y)``, where ``f_k`` are the network's output and
Gaussian filters of a few widths. SURE is quadratic in the weights, ``w^T G w + sigma^2 - 2 sigma^2 w^T (1 - D)``
with ``G_kl = mean(u_k u_l)``, ``u_k = f_k(y) - y`` and ``D_k = mean div f_k``, so the candidates' risks are exact
least-squares algebra: the noisy input (``w = 0``, risk ``sigma^2``), the network, the network blended with its input
(``alpha`` in [0, 1]), each Gaussian filter alone (its divergence exact, :func:`gaussian_divergence`), the network with
one Gaussian filter (non-negative weights), and every output at once with weights of any sign, SURE's own minimum over
the family (SURE-LET, Blu and Luisier 2007: a linear correction of the network's output, e.g. a difference of Gaussians
that restores detail it smoothed away). The lowest risk is written, so the combination is chosen unless the
least-squares system is degenerate; its estimated gain over the noisy input ``10 log10(sigma^2 / SURE)`` goes to the
log and to the scan's JSON sidecar, with every other candidate's. An option, ``network_widths``, adds the network's
output smoothed by Gaussian filters to the family (on generated validation heads it gained with Gaussian noise and
lost with Rician noise at 25/255, so it is off). Fitting six weights on the head's voxels makes the
estimate optimistic by about ``2 x 6 / N`` of ``sigma^2`` (under 0.001 dB on a head of 10^5 voxels). The network's
divergence is estimated by Monte Carlo with one probe (Ramani et al. 2008), which costs one more network pass; that
pass is read in the head only, so it may skip the sliding windows that lie wholly in the air
(:mod:`pipeline.inference.within`).

Everything is measured in the head (:func:`transforms.noise_level.head_mask` of the noisy scan), where the image
matters and where magnitude (Rician) noise is close to Gaussian; in the air a magnitude image's noise is Rayleigh and
SURE's assumption fails, so the air does not enter the estimate. Assumptions, stated in every sidecar: white noise of
one level (a scan resampled before denoising, or with noise that varies across the field of view, e.g. parallel
imaging, breaks them), Gaussian or high-SNR Rician; for PET's Poisson noise the estimate is approximate.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from scipy import ndimage

from pipeline.evaluation.sure import EPSILON_RATIO
from pipeline.utils.files import atomic_path
from transforms.noise_level import NOISE_METHODS, estimate_noise, head_mask, robust_max

__all__ = [
    "ASSUMPTIONS",
    "MAX_PLAUSIBLE_GAIN_DB",
    "GuardReport",
    "Predict",
    "SureGuard",
    "gaussian_centre_weight",
    "gaussian_divergence",
    "report_path",
    "write_guard_report",
]

logger = logging.getLogger(__name__)

ASSUMPTIONS = (
    "SURE assumes additive white noise of one standard deviation (Gaussian; Rician magnitude noise where the signal "
    "is well above it, i.e. in the head); it is scored in the head mask only. A resampled grid or spatially varying "
    "noise breaks it; for Poisson (PET) noise it is approximate."
)

_NETWORK = "network"
_LET = "network + filters (SURE-LET)"
_LET_FILTERS = "filters (SURE-LET)"
_UNGUARDED = "network (estimate implausible)"

#: A larger estimated gain (dB) means SURE went wrong (its risk near or below 0: the noise level was over-estimated).
MAX_PLAUSIBLE_GAIN_DB = 20.0


def gaussian_centre_weight(width: float, ndim: int = 3) -> float:
    """The centre weight of scipy's Gaussian filter: the filter's divergence at every voxel away from the border.

    Args:
        width: the standard deviation in voxels.
        ndim: the number of axes filtered.

    Returns:
        The weight (1 for a zero width).
    """
    if width <= 0:
        return 1.0
    size = 2 * int(4.0 * width + 0.5) + 1
    delta = np.zeros(size)
    delta[size // 2] = 1.0
    return float(ndimage.gaussian_filter1d(delta, width)[size // 2]) ** ndim


def gaussian_divergence(shape: Sequence[int], width: float, mask: np.ndarray | None = None) -> float:
    """The exact mean divergence of scipy's Gaussian filter (``mode="reflect"``) over ``mask``.

    Near a border the reflected kernel counts a voxel more than once, so its own weight there exceeds the centre
    weight (:func:`gaussian_centre_weight`); a scan whose head touches the field of view (EPI slabs) has many such
    voxels, and SURE would under-state the filter's divergence. The filter is separable, so its diagonal is the
    outer product of the three 1-D diagonals, each read off the filter applied to an identity matrix.

    Args:
        shape: the volume's shape.
        width: the standard deviation in voxels.
        mask: where to average (default: everywhere), shaped ``shape``.

    Returns:
        The mean of the filter's diagonal over the mask.
    """
    diagonals = [np.diag(ndimage.gaussian_filter1d(np.eye(n), width, axis=0)) for n in shape]
    diagonal = diagonals[0]
    for axis in diagonals[1:]:
        diagonal = np.multiply.outer(diagonal, axis)
    return float(diagonal.mean() if mask is None else diagonal[mask].mean())


@dataclass
class GuardReport:
    """What the guard found for one scan (JSON-ready through :meth:`as_dict`).

    Attributes:
        sigma: the noise standard deviation used, in the image's units.
        sigma_255: the same on the 0-255 scale of the scan's robust maximum.
        noise_method: ``"background"`` (measured in the air), ``"tissue"`` or ``"given"``.
        noise_model: ``"gaussian"``, ``"magnitude"`` (Rayleigh air) or ``"unknown"``.
        choice: the candidate written.
        weights: its weight on each output (the noisy input takes the rest).
        estimated_gain_db: SURE's estimate of the PSNR gain of what is written over the noisy input, in the head
            (``nan``, written as ``null``, when the estimate was implausible and the network's output was written).
        candidates: every candidate's estimated gain (dB).
        head_voxels: voxels in the head mask.
    """

    sigma: float
    sigma_255: float
    noise_method: str
    noise_model: str
    choice: str
    weights: dict[str, float]
    estimated_gain_db: float
    candidates: dict[str, float]
    head_voxels: int

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON types, with the assumptions it rests on."""
        return {
            "sigma": self.sigma,
            "sigma_255": round(self.sigma_255, 3),
            "noise_method": self.noise_method,
            "noise_model": self.noise_model,
            "choice": self.choice,
            "weights": {k: round(v, 4) for k, v in self.weights.items()},
            "estimated_gain_db": _rounded(self.estimated_gain_db),
            "candidates": {k: _rounded(v) for k, v in self.candidates.items()},
            "head_voxels": self.head_voxels,
            "assumptions": ASSUMPTIONS,
        }


class Predict(Protocol):
    """The network as inference runs it (e.g. a sliding window), mapping a tensor shaped like the scan to its output.

    ``where`` (a boolean head mask shaped like the scan's spatial axes) says where the output will be read: a
    predict may compute only there (:func:`pipeline.inference.within.predict_within`) or ignore it.
    """

    def __call__(self, image: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
        """The network's output for ``image``, read only in ``where`` when it is given."""


def _rounded(value: float) -> float | None:
    return round(value, 3) if math.isfinite(value) else None


class SureGuard:
    """Pick, per scan, the output of least estimated error among the network, blends, Gaussian filters and the input.

    Args:
        widths: the Gaussian filters' standard deviations in voxels.
        sigma_255: the noise level on the 0-255 scale of the scan's robust maximum, when the user knows it;
            ``None`` estimates it blind (``noise_method``).
        noise_method: where to estimate it, one of :data:`transforms.noise_level.NOISE_METHODS`.
        seed: seeds the Monte-Carlo probe, so a scan gives the same output every run.
        combine: also score every output at once with weights of any sign (SURE-LET); ``False`` keeps to the
            network, its blend, single filters and non-negative pairs (``benchmarks.guard_family`` compares both).
        network_widths: also score the network's output smoothed by Gaussian filters of these widths (voxels), for a
            network that under-smooths; their divergences come from the same Monte-Carlo probe, whose second pass
            then covers the head and the filters' reach around it.

    Raises:
        ValueError: a negative width, a non-positive ``sigma_255`` or an unknown method.
    """

    def __init__(
        self,
        widths: Sequence[float] = (0.5, 0.75, 1.0, 1.5, 2.0),
        sigma_255: float | None = None,
        noise_method: str = "auto",
        seed: int = 0,
        combine: bool = True,
        network_widths: Sequence[float] = (),
    ) -> None:
        if any(float(w) <= 0 for w in (*widths, *network_widths)):
            raise ValueError(f"widths must be positive (voxels), got {[*widths, *network_widths]}.")
        if sigma_255 is not None and not float(sigma_255) > 0:
            raise ValueError(f"sigma_255 must be positive or None (estimate it), got {sigma_255!r}.")
        if noise_method not in NOISE_METHODS:
            raise ValueError(f"noise_method must be one of {NOISE_METHODS}, got {noise_method!r}.")
        self.widths = tuple(float(w) for w in widths)
        self.sigma_255 = None if sigma_255 is None else float(sigma_255)
        self.noise_method = noise_method
        self._warned_tissue = False
        self.seed = int(seed)
        self.combine = bool(combine)
        self.network_widths = tuple(float(w) for w in network_widths)

    def noise(
        self, volume: np.ndarray, head: np.ndarray | None = None, reference: float | None = None
    ) -> tuple[float, str, str]:
        """``(sigma in image units, method, model)`` of a scan: the level given, or the blind estimate.

        ``reference`` is the scan's :func:`robust_max` when the caller has it (the scale of a given level).
        """
        if self.sigma_255 is not None:
            reference = robust_max(volume) if reference is None else reference
            return self.sigma_255 / 255.0 * reference, "given", "unknown"
        found = estimate_noise(volume, self.noise_method, head=head)
        if found["method"] == "tissue":  # warned once per guard (a skull-stripped cohort is all like this), then logged
            log = logger.info if self._warned_tissue else logger.warning
            self._warned_tissue = True
            log(
                "no air around the head to measure the noise in: its level (%.1f/255) was estimated in the tissue's "
                "flattest patches (within 0.95-1.19x of the truth on generated heads cropped inside the head, and "
                "SURE's estimated gain errs by about 1 dB per 4 %% of that error at large gains); give the level "
                "with --noise-level where it is known",
                found["noise_level_255"],
            )
        return float(found["noise_sigma"]), str(found["method"]), str(found["model"])

    def __call__(self, image: torch.Tensor, predict: Predict) -> tuple[torch.Tensor, GuardReport | None]:
        """Denoise ``image`` with ``predict`` and return what SURE says is best, with the report.

        Args:
            image: the preprocessed scan, ``(1, X, Y, Z)`` (or ``(X, Y, Z)``), float.
            predict: the network as inference runs it (:class:`Predict`). It is called twice: the output, and the
                output of a perturbed input for the divergence, with ``where`` the head mask (only read there). Run
                it in float32, since bf16 rounding would swamp the small perturbation.

        Returns:
            ``(output shaped like image, report)``; the report is ``None`` (and the output the network's) when the
            scan has no noise to measure or no head, which is logged.
        """
        y = image.detach().float().cpu()
        volume = y.reshape(y.shape[-3:]).numpy().astype(np.float64)
        pred = predict(image).detach().float().cpu().reshape(y.shape)
        mask = head_mask(volume)
        reference = robust_max(volume)
        sigma, method, model = self.noise(volume, mask, reference)
        if not sigma > 0 or not mask.any():
            logger.warning(
                "the guard is off for this scan (noise %.3g, %d head voxels): writing the network's output",
                sigma,
                int(mask.sum()),
            )
            return pred, None
        eps = EPSILON_RATIO * sigma
        generator = torch.Generator().manual_seed(self.seed)
        probe = torch.randn(y.shape, generator=generator)
        inside = torch.from_numpy(mask)
        reach = _filter_reach(self.network_widths)  # the smoothed outputs read the second pass this far from the head
        read = ndimage.maximum_filter(mask, size=2 * reach + 1) if reach else mask
        perturbed = predict((y + eps * probe).to(image), torch.from_numpy(read)).detach().float().cpu().reshape(y.shape)
        flat = inside.reshape(-1)
        base = y.reshape(-1)[flat].double()
        net = pred.reshape(-1)[flat].double()
        divergence = (
            float((probe.reshape(-1)[flat].double() * (perturbed.reshape(-1)[flat].double() - net)).mean()) / eps
        )
        outputs = {_NETWORK: net - base}
        centre = {_NETWORK: divergence}
        widths = {f"gaussian {width:g}": width for width in self.widths}
        for name, width in widths.items():  # only the head's voxels are kept; the chosen filter is run again below
            outputs[name] = torch.from_numpy(ndimage.gaussian_filter(volume, width)[mask]) - base
            centre[name] = gaussian_divergence(volume.shape, width, mask)
        smoothed = {f"network, gaussian {width:g}": width for width in self.network_widths}
        if smoothed:  # a float64 copy of the whole output, made only when the option is on
            full_pred = pred.reshape(volume.shape).double().numpy()
            change = (perturbed.reshape(volume.shape).double().numpy() - full_pred) / eps
            for name, width in smoothed.items():
                smooth, centre[name] = _smoothed(full_pred, change, probe.reshape(volume.shape), mask, width)
                outputs[name] = smooth - base
        if not (math.isfinite(divergence) and bool(torch.isfinite(outputs[_NETWORK]).all())):
            logger.warning("the network's output is not finite: the guard chooses among the filters and the input")
            for name in (_NETWORK, *smoothed):
                del outputs[name], centre[name]
        weights, risks = _candidates(outputs, centre, sigma, self.combine)
        best = min(risks, key=lambda name: risks[name] if math.isfinite(risks[name]) else math.inf)
        gains = {name: 10.0 * math.log10(sigma**2 / max(risk, 1e-30)) for name, risk in risks.items()}
        if gains[best] > MAX_PLAUSIBLE_GAIN_DB and _NETWORK in outputs:
            logger.warning(
                "SURE's estimate is implausible (a gain of %.1f dB): the noise level (%.1f/255, from the %s) is likely "
                "wrong, e.g. a scan without air around the head; writing the network's output (give the level with "
                "--noise-level to use the guard)",
                gains[best],
                255.0 * sigma / reference,
                method,
            )
            best = _UNGUARDED
            weights[best] = {_NETWORK: 1.0}
            gains = {name: math.nan for name in [*gains, best]}
        output = y.double().clone()
        for name, weight in weights[best].items():
            if name == _NETWORK:
                full = pred.double()
            elif name in smoothed:
                full = torch.from_numpy(ndimage.gaussian_filter(full_pred, smoothed[name]))
            else:
                full = torch.from_numpy(ndimage.gaussian_filter(volume, widths[name]))
            output += weight * (full.reshape(y.shape) - y.double())
        report = GuardReport(
            sigma=sigma,
            sigma_255=255.0 * sigma / reference,
            noise_method=method,
            noise_model=model,
            choice=best,
            weights=weights[best],
            estimated_gain_db=gains[best],
            candidates=gains,
            head_voxels=int(mask.sum()),
        )
        return output.to(pred.dtype), report


def _smoothed(
    prediction: np.ndarray, response: np.ndarray, probe: torch.Tensor, mask: np.ndarray, width: float
) -> tuple[torch.Tensor, float]:
    """The network's output smoothed by a Gaussian filter, in the mask, and its mean divergence there.

    The filter ``G`` is linear, so ``div(G f) = tr(G J_f)``, which the probe ``b`` estimates as the mean of
    ``b * G(J_f b)`` (Monte Carlo, as for the network): ``response`` is ``J_f b``, the network's response to the probe
    divided by its size, which must be exact within the filter's reach of the mask (:func:`_filter_reach`).
    """
    moved = ndimage.gaussian_filter(response, width)[mask]
    divergence = float((probe.numpy()[mask].astype(np.float64) * moved).mean())
    return torch.from_numpy(ndimage.gaussian_filter(prediction, width)[mask]), divergence


def _filter_reach(widths: Sequence[float]) -> int:
    """How far (voxels) scipy's Gaussian filters of ``widths`` reach: the kernel's radius, ``int(4 w + 0.5)``."""
    return max((int(4.0 * w + 0.5) for w in widths), default=0)


def _candidates(
    outputs: dict[str, torch.Tensor], divergence: dict[str, float], sigma: float, combine: bool = True
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Each candidate's weights and SURE risk (the module docstring's quadratic form)."""
    names = list(outputs)
    u = torch.stack([outputs[n] for n in names])
    gram = (u @ u.T / u.shape[1]).numpy()
    drive = np.array([sigma**2 * (1.0 - divergence[n]) for n in names])
    index = {n: i for i, n in enumerate(names)}

    def risk(weights: dict[str, float]) -> float:
        w = np.zeros(len(names))
        for n, v in weights.items():
            w[index[n]] = v
        return float(w @ gram @ w + sigma**2 - 2.0 * w @ drive)

    def fit(chosen: Sequence[str]) -> dict[str, float] | None:
        rows = [index[n] for n in chosen]
        try:
            w = np.linalg.solve(gram[np.ix_(rows, rows)], drive[rows])
        except np.linalg.LinAlgError:
            return None
        return dict(zip(chosen, map(float, w), strict=True)) if (w >= 0).all() else None

    weights: dict[str, dict[str, float]] = {"input": {}}
    combined = np.linalg.lstsq(gram, drive, rcond=None)[0]  # every output at once, weights of any sign (SURE-LET)
    if combine and np.isfinite(combined).all():
        weights[_LET if _NETWORK in index else _LET_FILTERS] = dict(zip(names, map(float, combined), strict=True))
    net = index.get(_NETWORK)
    if net is not None:
        alpha = float(np.clip(drive[net] / gram[net, net], 0.0, 1.0)) if gram[net, net] > 0 else 0.0
        weights.update({_NETWORK: {_NETWORK: 1.0}, "network blend": {_NETWORK: alpha}})
    for name in names:
        if name == _NETWORK:
            continue
        weights[name] = {name: 1.0}
        pair = fit([_NETWORK, name]) if net is not None else None
        if pair is not None:
            weights[f"network + {name}"] = pair
    return weights, {name: risk(w) for name, w in weights.items()}


def report_path(output: str | os.PathLike) -> Path:
    """The guard's sidecar of an output file: ``sub-01_denoised.nii.gz`` -> ``sub-01_denoised.json``."""
    output = Path(output)
    name = output.name
    for suffix in (".nii.gz", *output.suffixes[-1:]):
        if name.endswith(suffix):
            return output.with_name(name[: -len(suffix)] + ".json")
    return output.with_name(name + ".json")


def write_guard_report(report: GuardReport, output: str | os.PathLike, source: str = "") -> Path:
    """Write the report beside the output (atomically) and log it in one line.

    Args:
        report: the guard's report.
        output: the denoised file it describes.
        source: the input scan, named in the sidecar and the log.

    Returns:
        The sidecar's path.
    """
    path = report_path(output)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"source": source, "output": Path(output).name, **report.as_dict()}, indent=2) + "\n")
    weights = ", ".join(f"{k} {v:.2f}" for k, v in report.weights.items()) or "none"
    logger.info(
        "%s: noise %.1f/255 (%s); wrote %s (weights: %s), estimated gain over the noisy input %+.2f dB (network "
        "alone %+.2f dB)",
        source or output,
        report.sigma_255,
        "measured in the air" if report.noise_method == "background" else report.noise_method,
        report.choice,
        weights,
        report.estimated_gain_db,
        report.candidates.get(_NETWORK, math.nan),
    )
    return path
