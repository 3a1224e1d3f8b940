"""Noisy cases and the methods scored side by side on them: blind-tuned filters, oracles, the network and its guard."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from benchmarks._common import head_mask, noisy_copy
from benchmarks.quality import denoise_with_network
from benchmarks.real_scans.constants import BLIND_RULES, METHODS, ORACLE_GRIDS
from benchmarks.real_scans.scans import RealScan, _crop_box, high_snr
from pipeline.evaluation.classical import OUTPUT_FLOOR, get_denoiser, tune
from pipeline.evaluation.metrics import volume_quality
from transforms.intensity import robust_max

__all__ = ["blind_param", "blind_sigma_255", "fit_blind_rules", "guarded_output", "noisy_cases", "score_case"]


def noisy_cases(
    scans: Sequence[RealScan], noises: Sequence[str], levels: Sequence[float], seed: int, log: bool = True
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seeded noisy copies of each scan's volume for the cases that pass :func:`high_snr`, and the skipped ones.

    Args:
        scans: the scans.
        noises: ``"gaussian"`` and/or ``"rician"``.
        levels: sigma on the 0-255 scale of each scan's robust maximum.
        seed: base seed; each (scan, noise, level) gets its own stream (:func:`transforms.noise.item_seed`).
        log: print each skipped case with its reason.

    Returns:
        ``(cases, skipped)``: cases are dicts with ``scan``, ``noise``, ``level``, ``noisy``, ``clean`` (the
        reference), ``mask`` and ``reference_noise_var``; skipped ones have ``scan``, ``level`` and ``reason``.
    """
    from transforms.noise import item_seed

    cases, skipped = [], []
    for scan in scans:
        for level in levels:
            scored, reason = high_snr(scan, level)
            if not scored:
                skipped.append({"scan": scan.name, "level": float(level), "reason": reason})
                if log:
                    print(f"{scan.name} at {level:g}/255: {reason}")
                continue
            for noise in noises:
                stream = item_seed(seed, f"{scan.name}-{noise}-{level:g}")
                cases.append(
                    {
                        "scan": scan.name,
                        "noise": noise,
                        "level": float(level),
                        "noisy": noisy_copy(scan.volume, noise, stream, level),
                        "clean": scan.reference,
                        "mask": scan.mask,
                        "reference_noise_var": scan.reference_noise_var,
                    }
                )
    return cases, skipped


def blind_sigma_255(noisy: np.ndarray) -> float:
    """The blind noise estimate of a noisy volume on the 0-255 scale of its robust maximum (never the reference).

    Args:
        noisy: the noisy volume.

    Returns:
        :func:`transforms.noise_level.estimate_noise_sigma` (Haar MAD on tissue) x 255 / robust maximum.
    """
    from transforms.noise_level import estimate_noise_sigma

    return 255.0 * estimate_noise_sigma(noisy) / robust_max(noisy)


def blind_param(method: str, sigma_255: float, rules: dict[str, tuple[float, ...]] | None = None) -> float:
    """The parameter of a classical filter from the blind noise estimate alone (:data:`BLIND_RULES`).

    Args:
        method: ``"gaussian"`` (width in voxels) or ``"nl_means"`` (``h`` / estimated sigma).
        sigma_255: :func:`blind_sigma_255` of the noisy volume.
        rules: the rules (default :data:`BLIND_RULES`).

    Returns:
        ``clip(a + b * sigma_255, low, high)``, rounded to 0.01.
    """
    a, b, low, high = (rules or BLIND_RULES)[method]
    return round(float(np.clip(a + b * sigma_255, low, high)), 2)


def guarded_output(
    model: torch.nn.Module, noisy: np.ndarray, roi: int, overlap: float, bf16: bool = False, guard: Any = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """The project's default output: the network guarded by ``pipeline.inference.guard.SureGuard``.

    The scan is divided by its robust maximum (as the bundle's preprocessing does), the guard estimates the noise
    blind, runs the network through ``predict`` (:func:`benchmarks.quality.denoise_with_network`, twice: the output
    and a perturbed input for SURE's divergence, so in float32 as the guard asks) and chooses by SURE; its output is
    multiplied back and floored (``inference.yaml``'s ``output_min``).

    Args:
        model: the network.
        noisy: the noisy volume.
        roi: sliding-window tile edge.
        overlap: sliding-window overlap.
        bf16: ignored: the guard's two passes run in float32 (bf16 rounding would swamp SURE's perturbation).
        guard: the guard (default ``SureGuard()``).

    Returns:
        ``(output on the input's scale, the guard's report as a dict)``.
    """
    if guard is None:
        from pipeline.inference.guard import SureGuard

        guard = SureGuard()
    scale = robust_max(noisy)
    image = torch.from_numpy(np.ascontiguousarray(noisy / scale, dtype=np.float32))[None]

    def predict(x: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
        array = np.asarray(x.detach().cpu().numpy()[0], dtype=np.float32)
        inside = None if where is None else where.numpy()
        return torch.from_numpy(denoise_with_network(model, array, roi, overlap, False, floor=None, where=inside))[None]

    output, report = guard(image, predict)
    out = np.asarray(torch.as_tensor(output).detach().cpu().numpy(), dtype=np.float32).reshape(noisy.shape) * scale
    if report is None:  # the guard is off for this scan (no noise or no head): it wrote the network's output
        found: dict[str, Any] = {"choice": "network (guard off)"}
    else:
        found = report.as_dict() if hasattr(report, "as_dict") else dict(report)
        found["sigma_input_255"] = round(255.0 * float(found["sigma"]) * scale, 3)  # the added level's scale
    return (out if OUTPUT_FLOOR is None else np.maximum(out, OUTPUT_FLOOR)), found


def _scored(case: dict[str, Any], method: str, run: Callable[[], np.ndarray], **extra: Any) -> dict[str, Any]:
    """Run one method on one case, timed, and score it in the head mask (noise-corrected for a second acquisition)."""
    start = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - start
    quality = volume_quality(out, case["clean"], case["mask"])
    row = {
        "scan": case["scan"],
        "noise": case["noise"],
        "level": case["level"],
        "method": method,
        "psnr_head": quality["psnr_brain"],
        "ssim_head": round(quality["ssim_brain"], 4),
        "psnr_whole": round(quality["psnr_volume"], 2),
        "seconds": round(seconds, 3),
        **extra,
    }
    variance = case.get("reference_noise_var", 0.0)
    if variance > 0:
        mse = 10 ** (-quality["psnr_brain"] / 10)
        row["psnr_head_second"] = round(quality["psnr_brain"], 2)
        row["psnr_head"] = 10 * np.log10(1.0 / max(mse - variance, 1e-12))
    row["psnr_head"] = round(float(row["psnr_head"]), 2)
    return row


def score_case(
    case: dict[str, Any],
    methods: Sequence[str],
    model: torch.nn.Module | None = None,
    roi: int = 32,
    overlap: float = 0.25,
    bf16: bool = False,
    quick: bool = False,
    guard: Any = None,
) -> list[dict[str, Any]]:
    """Score every method of ``methods`` on one case, side by side.

    The blind methods see only ``case["noisy"]``; the oracle ones tune on ``case["clean"]`` (labelled upper bounds).

    Args:
        case: one of :func:`noisy_cases`.
        methods: keys of :data:`METHODS`.
        model: the network (for ``network`` and ``default``).
        roi: sliding-window tile edge.
        overlap: sliding-window overlap.
        bf16: bf16 autocast for the network.
        quick: the oracles tune on the short grids.
        guard: the guard for ``default`` (default ``SureGuard()``).

    Returns:
        One row per method.
    """
    import functools

    rows = []
    sigma = blind_sigma_255(case["noisy"])
    noisy = case["noisy"]
    for method in methods:
        extra: dict[str, Any] = {}
        report: dict[str, Any] = {}
        if method == "noisy":
            extra = {"blind_sigma_255": round(sigma, 2), "robust_max": round(robust_max(noisy), 5)}
            run = functools.partial(np.asarray, noisy)
        elif method == "network":
            run = functools.partial(denoise_with_network, model, noisy, roi, overlap, bf16)
        elif method == "default":
            run = functools.partial(_guarded_into, report, model, noisy, roi, overlap, bf16, guard)
        elif method in ("gaussian_blind", "nl_means_blind"):
            denoiser = get_denoiser(method.removesuffix("_blind"))
            param = blind_param(denoiser.name, sigma)
            run, extra = functools.partial(denoiser, noisy, param), {"param": f"{denoiser.param}={param}"}
        elif method == "bm4d":
            run = functools.partial(get_denoiser("bm4d"), noisy)
        elif method in ("gaussian_oracle", "nl_means_oracle"):
            denoiser = get_denoiser(method.removesuffix("_oracle"))
            denoiser = dataclasses.replace(denoiser, grid=ORACLE_GRIDS[denoiser.name])
            param = tune(denoiser, [case], quick=quick)[0]
            run, extra = functools.partial(denoiser, noisy, param), {"param": f"{denoiser.param}={param}"}
        else:
            raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")
        rows.append(_scored(case, method, run, **extra))
        if method == "default":
            rows[-1]["guard"] = report
    return rows


def _guarded_into(report: dict[str, Any], *args: Any) -> np.ndarray:
    """:func:`guarded_output`, its report written into ``report`` (so the timed call returns the volume only)."""
    out, found = guarded_output(*args)
    report.update(found)
    return out


def fit_blind_rules(
    levels: Sequence[float] = (5, 10, 15, 20, 25, 30),
    spacings: Sequence[float] = (1.0, 2.0),
    seeds: Sequence[int] = (7,),
    crop: int = 48,
    noise_seed: int = 0,
) -> dict[str, Any]:
    """Fit :data:`BLIND_RULES` on generated heads (never the real scans): the best parameter vs the blind estimate.

    Generated T1 heads with skull (``pipeline.data.synth.synth_volumes``, ``contrasts=("t1",)``, ``head_prob=1``),
    their clean ``label`` divided by its robust maximum and cropped to ``crop``^3 at the head's centre, get Gaussian
    noise at each level (:func:`benchmarks._common.noisy_copy`); on each, the grid value of best PSNR in the head mask
    is found for the Gaussian width and NL means' ``h`` factor, and ``param = a + b * sigma_255`` is fitted by least
    squares against :func:`blind_sigma_255` of the noisy volume.

    Args:
        levels: added noise (0-255).
        spacings: voxel sizes of the generated heads (mm).
        seeds: generator seeds (one head each).
        crop: cube edge.
        noise_seed: base seed of the added noise.

    Returns:
        ``{"rules": {method: (a, b, low, high)}, "points": [...]}``.
    """
    from pipeline.data.synth import load_tissue_maps, synth_volumes
    from pipeline.evaluation.metrics import masked_psnr
    from transforms.noise import item_seed

    grids = ORACLE_GRIDS
    maps = load_tissue_maps()
    points = []
    for spacing in spacings:
        for seed in seeds:
            (item,) = synth_volumes(
                maps, n=1, seed=seed, voxel_size=spacing, level=5.0, contrasts=("t1",), head_prob=1.0
            )
            clean = np.asarray(item["label"][0].numpy(), dtype=np.float32)
            clean = clean / robust_max(clean)
            box = _crop_box(head_mask(clean), crop)
            clean = np.ascontiguousarray(clean[box])
            mask = head_mask(clean)
            for level in levels:
                noisy = noisy_copy(clean, "gaussian", item_seed(noise_seed, f"fit-{spacing}-{seed}-{level}"), level)
                sigma = blind_sigma_255(noisy)
                point = {"spacing": spacing, "seed": seed, "level": level, "blind_sigma_255": round(sigma, 2)}
                for name, grid in grids.items():
                    denoiser = get_denoiser(name)
                    scores = {p: masked_psnr(denoiser(noisy, p), clean, mask) for p in grid}
                    point[name] = max(grid, key=lambda p: scores[p])
                points.append(point)
                print(point, flush=True)
    rules = {}
    x = np.array([p["blind_sigma_255"] for p in points])
    for name in grids:
        y = np.array([p[name] for p in points], dtype=np.float64)
        b, a = np.polyfit(x, y, 1)
        low, high = BLIND_RULES[name][2:]
        rules[name] = (round(float(a), 3), round(float(b), 4), low, high)
    return {"rules": rules, "points": points}
