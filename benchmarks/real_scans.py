"""Trained denoisers against NL means, a Gaussian filter and BM4D on every real head scan shipped in the packages.

Run: ``python -m benchmarks.real_scans --weights RUN/model.pt [--weights OTHER/model.pt --label other]
[--levels 5 10 15 25] [--noises gaussian rician] [--scans anatomical ...] [--skip bm4d] [--adapt 15] [--quick]
[--out benchmarks/results/real_scans.json]``.

Scans (:func:`real_scans`; nothing is downloaded): the real scans of a person in nibabel's test data
(:data:`SCANS`): a T1 head with skull (``anatomical.nii``), EPI volumes of heads (the first volume of
``example4d.nii.gz`` and of AFNI's ``example4d+orig``) and an EPI of a head resampled to Talairach space (AFNI's
``scaled+tlrc``). Left out (:data:`LEFT_OUT`): ``functional.nii`` (3 slices of 8 mm), derivatives of other files,
phantoms, synthetic volumes, headers without their data, DICOM (needs pydicom), and elsewhere nilearn's stat map and
MNI152 template (an average, and the project's training source). Each volume is divided by its robust maximum
(:func:`transforms.intensity.robust_max`: 99.5th percentile of its non-zero voxels), the unit of the noise levels,
and gets a head mask (:func:`benchmarks._common.head_mask`: Otsu foreground, holes filled).

Reference: the original scan. It carries its own noise, estimated blind
(:func:`transforms.noise_level.estimate_noise_sigma`, on the 0-255 scale of its robust maximum) and reported: a
denoiser that also removes it is scored as wrong there, so the scan's own noise bounds every method's PSNR, most at
low added levels.

Noise: Gaussian and Rician of sigma ``--levels`` on the 0-255 scale (``transforms.noise.make_noise``, reference 1.0),
seeded per (scan, noise, level) from ``--seed`` (:func:`transforms.noise.item_seed`), so runs repeat.

Methods: the noisy input; a Gaussian filter and non-local means (:mod:`pipeline.evaluation.classical`) with their
parameter tuned on each scored volume against its reference (the grid value of best PSNR in the head mask): an oracle
advantage no user has, which favours them; BM4D (optional ``bm4d`` package) with the noise sigma estimated blind from
the noisy volume, as ``pipeline.evaluation.classical`` gives it; and each trained denoiser of ``--weights`` (its model
card ``model.json`` beside it rebuilds the network; :func:`load_denoiser`), run as the bundle's inference does
(:func:`benchmarks.quality.denoise_with_network`: input divided by its own robust maximum, sliding window of the
bundle's 32^3 tiles (``--roi``; the card's training patch is not the tile, as in the bundle), 4 per pass, overlap
0.25 (``--overlap``), Gaussian blending, ``torch.inference_mode``, ``--precision`` (auto: bf16 on a CPU with native
bf16, as the bundle)).

Adaptation (``--adapt LEVEL ...``): each network is also fine-tuned, without any clean reference, on the site's own
noisy scans (every scan at one noise type and level, written to a temporary folder) with ``adapt.yaml``'s loss
(``--adapt-loss``, default the blind-spot ``n2s``) and held-out guard (``--adapt-criterion``, default ``sure``)
(:func:`adapt_to_site`), and scored again as ``<label>+<loss>``.

Scores: PSNR (data range 1) and SSIM (:func:`pipeline.evaluation.metrics.volume_quality`) in the head mask and over the
whole volume, seconds (wall and CPU) per volume for the run that is scored (tuning not counted). The issue's targets,
as differences measured side by side: each network - NL means >= +1 dB, - best Gaussian filter >= +1 dB,
- BM4D >= -0.5 dB (PSNR in the head mask, mean over scans, noises and levels; each case is listed).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import (
    Progress,
    announce,
    benchmark_precision,
    default_out,
    format_table,
    head_mask,
    machine_info,
    nibabel_data_dir,
    noisy_copy,
    write_json,
)
from benchmarks.quality import denoise_with_network
from pipeline.evaluation.classical import bm4d_available, get_denoiser, tune
from pipeline.evaluation.metrics import volume_quality
from pipeline.training.adapt import CRITERIA, LOSSES
from transforms.intensity import robust_max

__all__ = [
    "CLASSICAL",
    "LEFT_OUT",
    "SCANS",
    "TARGETS",
    "RealScan",
    "differences",
    "adapt_to_site",
    "load_denoiser",
    "main",
    "noisy_cases",
    "real_scans",
    "score_classical",
    "score_network",
]

#: The real scans of a person in nibabel's test data: (name, file, what it is).
SCANS: tuple[tuple[str, str, str], ...] = (
    ("anatomical", "anatomical.nii", "T1-weighted head with skull, SPM-normalised"),
    ("example4d", "example4d.nii.gz", "EPI fMRI of a head (FSL), first of 2 volumes"),
    ("afni_epi", "example4d+orig.HEAD", "EPI of a head (AFNI, original space), first of 3 volumes"),
    ("afni_tlrc", "scaled+tlrc.HEAD", "EPI of a head resampled to Talairach space (AFNI)"),
)

#: Files of nibabel's test data looked at and left out, and why.
LEFT_OUT: dict[str, str] = {
    "functional.nii": "fMRI of a head, but a 17 x 21 x 3 slab of 4 x 4 x 8 mm: too thin for 3-D (SSIM's 7^3 window)",
    "example_nifti2.nii.gz": "a 32 x 20 x 12 crop of example4d.nii.gz",
    "reoriented_anat_moved.nii, resampled_anat_moved.nii": "anatomical.nii resampled",
    "*.PAR / *.REC": "phantoms, or headers whose image data is not shipped",
    "analyze.hdr, nifti1.hdr, nifti2.hdr": "headers without their image data",
    "*.mnc, test.mgz, standard.nii.gz, tinypet.v": "synthetic or tiny test volumes (or MINC2, which needs h5py)",
    "0.dcm, 1.dcm": "DICOM: reading it needs pydicom, which is not installed",
}

#: The classical methods, in table order after the noisy input.
CLASSICAL = ("gaussian", "nl_means", "bm4d")

#: The issue's targets: network PSNR minus the method's, in dB.
TARGETS = {"nl_means": 1.0, "gaussian": 1.0, "bm4d": -0.5}

_SHORT = {"nl_means": "NL means", "gaussian": "best Gaussian filter", "bm4d": "BM4D"}
_QUALITY = {
    "psnr_brain": "psnr_head",
    "ssim_brain": "ssim_head",
    "psnr_volume": "psnr_whole",
    "ssim_volume": "ssim_whole",
}


@dataclasses.dataclass(frozen=True)
class RealScan:
    """One real scan on its robust-maximum scale, with its head mask and its own noise.

    Attributes:
        name: short name (:data:`SCANS`).
        path: the file.
        description: what it is.
        volume: float32 ``(X, Y, Z)``, divided by ``scale``.
        spacing_mm: voxel size.
        mask: the head mask (Otsu foreground, holes filled).
        noise_sigma_255: its own noise, estimated blind, on the 0-255 scale of its robust maximum.
        scale: its robust maximum in the file's units.
    """

    name: str
    path: Path
    description: str
    volume: np.ndarray
    spacing_mm: tuple[float, float, float]
    mask: np.ndarray
    noise_sigma_255: float
    scale: float

    def info(self) -> dict[str, Any]:
        """The JSON-ready facts (everything but the arrays).

        Returns:
            name, file, description, shape, spacing, robust maximum, mask share and own noise.
        """
        return {
            "name": self.name,
            "file": f"nibabel/tests/data/{self.path.name}",
            "description": self.description,
            "shape": list(self.volume.shape),
            "spacing_mm": [round(s, 3) for s in self.spacing_mm],
            "robust_max": round(self.scale, 4),
            "mask_share": round(float(self.mask.mean()), 3),
            "own_noise_sigma_255": round(self.noise_sigma_255, 2),
        }


def _load_scan(name: str, filename: str, description: str) -> RealScan:
    import nibabel as nib

    from transforms.noise_level import estimate_noise_sigma

    path = nibabel_data_dir() / filename
    image = nib.load(path)
    data = np.asarray(image.dataobj, dtype=np.float32)
    data = data[..., 0] if data.ndim == 4 else data  # the first volume of a series
    scale = robust_max(data)
    volume = np.ascontiguousarray(data / scale, dtype=np.float32)
    return RealScan(
        name=name,
        path=path,
        description=description,
        volume=volume,
        spacing_mm=tuple(float(z) for z in image.header.get_zooms()[:3]),
        mask=head_mask(volume),
        noise_sigma_255=255.0 * estimate_noise_sigma(volume),
        scale=scale,
    )


def real_scans(names: Sequence[str] | None = None) -> list[RealScan]:
    """Load the real scans of :data:`SCANS` from the installed nibabel (nothing is downloaded).

    Args:
        names: the scans to load (default: all), by name.

    Returns:
        The scans, in :data:`SCANS` order.

    Raises:
        ValueError: for an unknown name.
    """
    known = [s[0] for s in SCANS]
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise ValueError(f"unknown scans {unknown}; choose from {known}")
    return [_load_scan(*entry) for entry in SCANS if names is None or entry[0] in names]


def noisy_cases(scans: Sequence[RealScan], noises: Sequence[str], levels: Sequence[float], seed: int) -> list[dict]:
    """Seeded noisy copies of each scan (:func:`benchmarks._common.noisy_copy`), the original as reference.

    Args:
        scans: the scans.
        noises: ``"gaussian"`` and/or ``"rician"``.
        levels: sigma on the 0-255 scale of each scan's robust maximum.
        seed: base seed; each (scan, noise, level) gets its own stream (:func:`transforms.noise.item_seed`).

    Returns:
        Dicts with ``scan``, ``noise``, ``level``, ``noisy``, ``clean`` and ``mask``.
    """
    from transforms.noise import item_seed

    return [
        {
            "scan": scan.name,
            "noise": noise,
            "level": float(level),
            "noisy": noisy_copy(scan.volume, noise, item_seed(seed, f"{scan.name}-{noise}-{level:g}"), level),
            "clean": scan.volume,
            "mask": scan.mask,
        }
        for scan in scans
        for noise in noises
        for level in levels
    ]


def _scored(case: dict[str, Any], method: str, run: Callable[[], np.ndarray], param: Any = None) -> dict[str, Any]:
    """Run one method on one case, timed, and score it in the head mask and over the whole volume."""
    start, cpu_start = time.perf_counter(), time.process_time()
    out = run()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    quality = volume_quality(out, case["clean"], case["mask"])
    return {
        "scan": case["scan"],
        "noise": case["noise"],
        "level": case["level"],
        "method": method,
        "param": param,
        **{_QUALITY[k]: round(v, 2 if k.startswith("psnr") else 4) for k, v in quality.items()},
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
    }


def score_classical(case: dict[str, Any], method: str, quick: bool = False) -> dict[str, Any]:
    """Score the noisy input or a classical method, its parameter tuned on this very case (an oracle advantage).

    Args:
        case: one of :func:`noisy_cases`.
        method: ``"noisy"`` or one of :data:`CLASSICAL`.
        quick: tune on the short grids.

    Returns:
        The row (``param`` names the tuned parameter).
    """
    if method == "noisy":
        return _scored(case, method, lambda: case["noisy"])
    denoiser = get_denoiser(method)
    param = tune(denoiser, [case], quick=quick)[0]
    text = None if param is None else f"{denoiser.param}={param}"
    return _scored(case, method, lambda: denoiser(case["noisy"], param), text)


def score_network(
    case: dict[str, Any], label: str, model: torch.nn.Module, patch: int, overlap: float, bf16: bool = False
) -> dict[str, Any]:
    """Score a trained denoiser on one case, run as the bundle's inference runs it.

    Args:
        case: one of :func:`noisy_cases`.
        label: the network's name in the tables.
        model: the network.
        patch: sliding-window tile edge (voxels).
        overlap: sliding-window overlap.
        bf16: bf16 autocast.

    Returns:
        The row.
    """
    return _scored(case, label, lambda: denoise_with_network(model, case["noisy"], patch, overlap, bf16))


def adapt_to_site(
    model: torch.nn.Module,
    cases: Sequence[dict[str, Any]],
    folder: Path,
    iterations: int,
    seed: int,
    loss: str = "n2s",
    criterion: str = "sure",
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Self-supervised adaptation on a folder of the noisy scans themselves, no clean reference (``adapt.yaml``).

    The noisy volumes of ``cases`` (one site: every scan at one noise type and level) are written to ``folder`` as
    NIfTI and :func:`pipeline.training.adapt.adapt_denoiser` fine-tunes a copy of ``model`` on them with ``loss`` and
    the held-out guard's ``criterion``, with the bundle's preprocessing (load, orient, divide by the robust maximum).
    The references are never read.

    Args:
        model: the trained denoiser (left unchanged).
        cases: the site's noisy cases (:func:`noisy_cases`).
        folder: an empty folder for the site's scans and the adapted weights.
        iterations: adaptation steps at most.
        seed: seeds the patches, masks and hold-out.
        loss: the adaptation loss (:data:`pipeline.training.adapt.LOSSES`).
        criterion: the guard's check (:data:`pipeline.training.adapt.CRITERIA`).

    Returns:
        ``(adapted copy, or the unchanged copy when the guard refused it; the adaptation's report)``.
    """
    import copy

    import nibabel as nib
    from monai.transforms import Compose

    from pipeline.training.adapt import adapt_denoiser
    from transforms.intensity import ScalePercentiled
    from transforms.io import LoadScand, canonical_transforms

    scans = folder / "scans"
    scans.mkdir(parents=True, exist_ok=True)
    for case in cases:
        nib.save(nib.Nifti1Image(case["noisy"].astype(np.float32), np.eye(4)), scans / f"{case['scan']}.nii.gz")
    items = [{"image": str(path), "subject": path.name.split(".")[0]} for path in sorted(scans.iterdir())]
    preprocessing = Compose(
        [
            LoadScand(keys="image"),
            *canonical_transforms("image", None),
            ScalePercentiled(keys="image", stats_key="image", lower=None, upper=99.5, nonzero=True, clip=False),
        ]
    )
    network = copy.deepcopy(model)
    result = adapt_denoiser(
        network,
        items,
        preprocessing,
        folder / "adapted.pt",
        patch_size=32,
        iterations=iterations,
        seed=seed,
        loss=loss,
        criterion=criterion,
    )
    keys = ("accepted", "reason", "iterations", "criterion", "start_loss", "best_loss", "psnr_gain_db", "noise_levels")
    report = {key: value for key, value in result.to_dict().items() if key in keys}
    return network.eval(), {"loss": loss} | report


def load_denoiser(weights: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a trained denoiser from its model card and load its weights, as ``pipeline.inference.infer`` does.

    Args:
        weights: ``model.pt`` with ``model.json`` beside it.

    Returns:
        ``(network in eval mode, card)``.

    Raises:
        ValueError: no card, or a card whose preprocessing this benchmark does not reproduce (a ``spacing`` to
            resample to, or percentiles other than the robust maximum's).
        CheckpointError: weights that do not fit the card's network.
    """
    from pipeline.inference.infer import load_weights
    from pipeline.training.model_card import build_network, card_path, read_model_card

    card = read_model_card(weights)
    if card is None:
        raise ValueError(f"{weights} has no model card ({card_path(weights).name}): the benchmark cannot rebuild it")
    for key, expected in (("spacing", None), ("percentile_lower", None), ("percentile_upper", 99.5)):
        if card.get(key, expected) != expected:
            raise ValueError(f"{card_path(weights)}: {key} {card[key]!r}; the benchmark runs with {expected!r} only")
    return load_weights(build_network(card), weights).eval(), card


def _expected_seconds(cases: Sequence[dict[str, Any]], bm4d: bool, networks: int) -> float:
    """Roughly how long the cases take on 2 cores.

    From a run on the shared 2-core Xeon (AMX) at load 2-3, per volume of ``v`` voxels: 4 s + 35 us * v for the
    tuning and scoring, BM4D 4 s + 140 us * v, a 16-128-channel ResUnet3D 1 s + 15 us * v.
    """
    seconds = 0.0
    for case in cases:
        voxels = case["noisy"].size
        seconds += 4 + 35e-6 * voxels + bm4d * (4 + 140e-6 * voxels) + networks * (1 + 15e-6 * voxels)
    return seconds


def _labels(weights: Sequence[str], given: Sequence[str]) -> list[str]:
    """The networks' names: ``--label`` in order, then each weights file's folder; repeated names are numbered."""
    labels = [*given, *(Path(w).resolve().parent.name for w in weights[len(given) :])]
    return [f"{label} ({i})" if labels.count(label) > 1 else label for i, label in enumerate(labels, 1)]


def differences(rows: Sequence[dict[str, Any]], networks: Sequence[str]) -> list[dict[str, Any]]:
    """Each network's PSNR minus NL means', the best Gaussian filter's and BM4D's, per case.

    Args:
        rows: the scored rows.
        networks: the network labels.

    Returns:
        Rows with ``network``, ``scan``, ``noise``, ``level`` and ``<method>_head`` / ``<method>_whole`` (dB) for
        each method of :data:`TARGETS` that was run.
    """
    by = {(r["scan"], r["noise"], r["level"], r["method"]): r for r in rows}
    out = []
    for label in networks:
        for (scan, noise, level, method), net in by.items():
            if method != label:
                continue
            row: dict[str, Any] = {"network": label, "scan": scan, "noise": noise, "level": level}
            for other in TARGETS:
                if (scan, noise, level, other) in by:
                    ref = by[scan, noise, level, other]
                    for where in ("head", "whole"):
                        row[f"{other}_{where}"] = round(net[f"psnr_{where}"] - ref[f"psnr_{where}"], 2)
            out.append(row)
    return out


def _targets(diffs: Sequence[dict[str, Any]], networks: Sequence[str]) -> dict[str, str]:
    """The issue's targets as measured: mean difference in the head mask (whole volume beside), met or missed."""
    out = {}
    for label in networks:
        mine = [d for d in diffs if d["network"] == label]
        for other, target in TARGETS.items():
            head = [d[f"{other}_head"] for d in mine if f"{other}_head" in d]
            if not head:
                continue
            whole = float(np.mean([d[f"{other}_whole"] for d in mine if f"{other}_whole" in d]))
            mean, met = float(np.mean(head)), sum(v >= target for v in head)
            out[f"{label} - {_SHORT[other]}, head mask, mean of {len(head)} (target >= {target:+g} dB)"] = (
                f"{mean:+.2f} dB ({whole:+.2f} whole volume), {'met' if mean >= target else 'missed'}; "
                f"met in {met}/{len(head)} cases"
            )
    return out


def _pair(head: float, whole: float, fmt: str) -> str:
    """A table cell: the head-mask figure, then the whole-volume one."""
    return f"{head:{fmt}} / {whole:{fmt}}"


def _print_tables(rows: list[dict[str, Any]], scans: list[RealScan], diffs: list[dict[str, Any]]) -> None:
    """A PSNR and an SSIM table per scan (rows methods, columns noise and level), then the differences."""
    columns = list(dict.fromkeys(f"{r['noise']} {r['level']:g}" for r in rows))
    for scan in scans:
        print(
            f"\n{scan.name}: {scan.description}, {scan.volume.shape} at {scan.spacing_mm} mm, own noise "
            f"{scan.noise_sigma_255:.1f}/255, head mask {scan.mask.mean():.0%}"
        )
        mine = [r for r in rows if r["scan"] == scan.name]
        for metric, fmt in (("psnr", ".2f"), ("ssim", ".3f")):
            table = []
            for method in dict.fromkeys(r["method"] for r in mine):
                own = [r for r in mine if r["method"] == method]
                cells = {
                    f"{r['noise']} {r['level']:g}": _pair(r[f"{metric}_head"], r[f"{metric}_whole"], fmt) for r in own
                }
                table.append({"method": method, **cells, "s/volume": float(np.mean([r["seconds"] for r in own]))})
            print(f"\n{metric.upper()}, head mask / whole volume\n")
            print(format_table(table, ["method", *columns, "s/volume"]))
    if diffs:
        goals = ", ".join(f"{_SHORT[o]} >= {t:+g}" for o, t in TARGETS.items())
        print(f"\nPSNR differences, network minus method, head mask / whole volume (dB); targets: {goals}\n")
        means = []
        for label in dict.fromkeys(d["network"] for d in diffs):
            mine = [d for d in diffs if d["network"] == label]
            keys = [k for k in mine[0] if k.endswith(("_head", "_whole"))]
            means.append({"network": label, "scan": "mean", **{k: float(np.mean([d[k] for d in mine])) for k in keys}})
        cells = [
            {**d, **{_SHORT[o]: _pair(d[f"{o}_head"], d[f"{o}_whole"], "+.2f") for o in TARGETS if f"{o}_head" in d}}
            for d in [*diffs, *means]
        ]
        print(format_table(cells, ["network", "scan", "noise", "level", *(_SHORT[o] for o in TARGETS)]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables and the issue's targets, write the JSON.

    Args:
        argv: command-line arguments (default: ``sys.argv``).

    Returns:
        The result dict that was written.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights", action="append", default=[], help="a trained model.pt with its model.json (repeat)"
    )
    parser.add_argument("--label", action="append", default=[], help="the name of each --weights (default: its folder)")
    parser.add_argument("--levels", type=float, nargs="+", default=[5.0, 10.0, 15.0, 25.0], help="sigma on 0-255")
    parser.add_argument("--noises", nargs="+", default=["gaussian", "rician"], choices=("gaussian", "rician"))
    parser.add_argument("--scans", nargs="+", default=None, choices=[s[0] for s in SCANS], help="default: all")
    parser.add_argument("--skip", nargs="*", default=[], choices=CLASSICAL, help="classical methods to leave out")
    parser.add_argument("--roi", type=int, default=32, help="sliding-window tile edge (the bundle's patch_size)")
    parser.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap (the bundle's default)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="the networks' precision")
    parser.add_argument("--quick", action="store_true", help="one scan, one level, no BM4D, short grids: a smoke run")
    parser.add_argument(
        "--adapt", type=float, nargs="*", default=[], help="levels at which each network is also adapted to the site"
    )
    parser.add_argument("--adapt-iterations", type=int, default=200, help="adaptation steps at most")
    parser.add_argument("--adapt-loss", default="n2s", choices=LOSSES, help="adapt.yaml's adapt_loss")
    parser.add_argument("--adapt-criterion", default="sure", choices=CRITERIA, help="adapt.yaml's guard criterion")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(default_out("real_scans")))
    args = parser.parse_args(argv)
    if len(args.label) > len(args.weights):
        parser.error("more --label than --weights")
    if args.quick:
        args.scans, args.levels, args.skip = [SCANS[0][0]], [15.0], [*args.skip, "bm4d"]
    precision, note = benchmark_precision(args.precision)
    labels = _labels(args.weights, args.label)
    networks = {label: load_denoiser(w) for label, w in zip(labels, args.weights)}
    methods = ["noisy", *(m for m in CLASSICAL if m not in args.skip and (m != "bm4d" or bm4d_available()))]
    if "bm4d" not in args.skip and not bm4d_available():
        print("bm4d: skipped - the optional 'bm4d' package is not installed (pip install -e '.[bm4d]')")

    scans = real_scans(args.scans)
    cases = noisy_cases(scans, args.noises, args.levels, args.seed)
    announce(
        "benchmarks.real_scans",
        f"{', '.join(methods + labels)} on {len(scans)} real scans x {', '.join(args.noises)} x levels "
        f"{', '.join(f'{v:g}' for v in args.levels)} ({len(cases)} noisy volumes); a line per volume",
        f"about {_expected_seconds(cases, 'bm4d' in methods, len(networks)) / 60:.1f} min on 2 cores",
        note if networks else None,
    )
    rows, progress = [], Progress(len(cases))
    for case in cases:
        mine = [score_classical(case, m, args.quick) for m in methods]
        for label, (model, _) in networks.items():
            mine.append(score_network(case, label, model, args.roi, args.overlap, precision == "bf16"))
        rows += mine
        progress.step(
            f"{case['scan']} {case['noise']} {case['level']:g}: PSNR head "
            + ", ".join(f"{r['method']} {r['psnr_head']:.2f}" for r in mine)
        )
    adaptations = []
    for label, (model, _) in networks.items():
        for level in args.adapt:
            for noise in args.noises:
                site = [c for c in cases if c["noise"] == noise and c["level"] == float(level)]
                if not site:
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    adapted, report = adapt_to_site(
                        model, site, Path(tmp), args.adapt_iterations, args.seed, args.adapt_loss, args.adapt_criterion
                    )
                adaptations.append({"network": label, "noise": noise, "level": float(level)} | report)
                print(f"{label} adapted to {noise} {level:g}: {report['reason']}", flush=True)
                rows += [
                    score_network(c, f"{label}+{args.adapt_loss}", adapted, args.roi, args.overlap, precision == "bf16")
                    for c in site
                ]
    if adaptations:
        labels += [f"{label}+{args.adapt_loss}" for label in networks]
    diffs = differences(rows, labels)
    _print_tables(rows, scans, diffs)
    ratios = _targets(diffs, labels)
    print()
    for key, value in ratios.items():
        print(f"{key}: {value}")
    if not networks:
        print("no --weights given: the targets compare trained networks with the classical methods")
    result = {
        "benchmark": "real_scans",
        "quick": args.quick,
        "machine": machine_info(),
        "setup": {
            "noises": args.noises,
            "levels_255": args.levels,
            "seed": args.seed,
            "methods": methods,
            "networks": [
                {
                    "label": label,
                    "weights": str(w),
                    "network_def": card.get("network_def"),
                    "card_patch_size": card.get("patch_size"),
                }
                for (label, (_, card)), w in zip(networks.items(), args.weights)
            ],
            "roi": args.roi,
            "overlap": args.overlap,
            "precision": precision,
            "precision_note": note,
            "classical_tuning": "oracle: each parameter chosen on the scored volume against its reference",
            "bm4d_sigma": "estimated blind from the noisy volume",
            "bm4d_installed": bm4d_available(),
            "reference": "the original scan, with its own noise (own_noise_sigma_255)",
            "mask": "Otsu head foreground, holes filled",
        },
        "scans": [s.info() for s in scans],
        "left_out": LEFT_OUT,
        "rows": rows,
        "adaptations": adaptations,
        "differences": diffs,
        "ratios": ratios,
    }
    print(f"wrote {write_json(result, args.out)}")
    return result


if __name__ == "__main__":
    main()
