"""``python -m benchmarks.real_scans``: the arguments, the run over every case and the JSON it writes."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import Progress, announce, benchmark_precision, default_out, machine_info, write_json
from benchmarks.real_scans.constants import BLIND_RULES, LEFT_OUT, METHODS, SNR_RATIO
from benchmarks.real_scans.network import adapt_to_site, guard_available, load_denoiser, shipped_weights
from benchmarks.real_scans.scans import RealScan, real_scans, scan_names
from benchmarks.real_scans.scoring import fit_blind_rules, noisy_cases, score_case
from benchmarks.real_scans.summary import differences, print_tables, targets
from pipeline.evaluation.classical import bm4d_available
from pipeline.training.adapt import CRITERIA, LOSSES

__all__ = ["main"]


def _expected_seconds(
    cases: Sequence[dict[str, Any]], methods: Sequence[str], bm4d_scans: Sequence[str] | None = None
) -> float:
    """Roughly how long the cases take on 2 busy cores of the AMD EPYC.

    Per volume of ``v`` voxels, measured here: scoring and the blind filters 2 s + 10 us * v, the two oracles
    60 us * v, BM4D 225 us * v, the network (raw and inside the guard) 2 x 20 us * v.
    """
    seconds = 0.0
    for case in cases:
        v = case["noisy"].size
        seconds += 2 + 10e-6 * v + 60e-6 * v * ("gaussian_oracle" in methods)
        bm4d = "bm4d" in methods and (bm4d_scans is None or case["scan"] in bm4d_scans)
        seconds += 225e-6 * v * bm4d + 40e-6 * v * ("network" in methods)
    return seconds


def _parser() -> argparse.ArgumentParser:
    """The command line (the package docstring's first line as its description)."""
    import benchmarks.real_scans as package

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.real_scans", description=package.__doc__.splitlines()[0]
    )
    parser.add_argument("--weights", default=None, help="model.pt with its card (default: the shipped model)")
    parser.add_argument("--levels", type=float, nargs="+", default=[5.0, 10.0, 15.0, 25.0], help="sigma on 0-255")
    parser.add_argument("--noises", nargs="+", default=["gaussian", "rician"], choices=("gaussian", "rician"))
    parser.add_argument("--scans", nargs="+", default=None, choices=scan_names(), help="default: all")
    parser.add_argument("--crop", type=int, default=None, help="crop each scan to a cube of this edge at its head")
    parser.add_argument("--skip", nargs="*", default=[], choices=list(METHODS)[1:], help="methods to leave out")
    parser.add_argument(
        "--bm4d-scans", nargs="+", default=None, choices=scan_names(), help="run BM4D on these scans only (slow)"
    )
    parser.add_argument("--roi", type=int, default=32, help="sliding-window tile edge (the bundle's patch_size)")
    parser.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="the network's precision")
    parser.add_argument("--quick", action="store_true", help="example4d cropped to 32^3, 15/255, no BM4D: a smoke run")
    parser.add_argument("--adapt", type=float, nargs="*", default=[], help="levels at which the network is adapted")
    parser.add_argument("--adapt-iterations", type=int, default=200, help="adaptation steps at most")
    parser.add_argument("--adapt-loss", default="n2s", choices=LOSSES, help="adapt.yaml's adapt_loss")
    parser.add_argument("--adapt-criterion", default="sure", choices=CRITERIA, help="adapt.yaml's guard criterion")
    parser.add_argument(
        "--known-level",
        action="store_true",
        help="give the guard the added noise level (--noise-level) instead of its blind estimate: a diagnostic of "
        "how much of SURE's error comes from the level",
    )
    parser.add_argument("--fit-blind-rules", action="store_true", help="refit BLIND_RULES on generated heads, exit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(default_out("real_scans")))
    return parser


def _methods(skip: Sequence[str], model: torch.nn.Module | None) -> list[str]:
    """The methods that run: :data:`METHODS` less ``skip`` and those whose network, guard or package is missing."""
    skipped = set(skip)
    if model is None:
        print("network, default: skipped - no --weights and no shipped model (pipeline.inference.ready)")
        skipped |= {"network", "default"}
    elif "default" not in skipped and not guard_available():
        print("default: skipped - pipeline.inference.guard is not there yet (the guarded output needs SureGuard)")
        skipped.add("default")
    if "bm4d" not in skipped and not bm4d_available():
        print("bm4d: skipped - the optional 'bm4d' package is not installed (pip install -e '.[bm4d]')")
        skipped.add("bm4d")
    return [m for m in METHODS if m not in skipped]


def _guard(case: dict[str, Any], known_level: bool) -> Any:
    """The default's guard: blind (``None``: ``SureGuard()``), or told the level added to ``case``.

    The guard reads the level on the 0-255 scale of the scan it is given, which the default divides by its robust
    maximum first, while the noise was added on the clean scan's [0, 1] scale.
    """
    if not known_level:
        return None
    from pipeline.inference.guard import SureGuard
    from transforms.noise_level import robust_max

    return SureGuard(sigma_255=case["level"] / robust_max(case["noisy"]))


def _score_cases(
    cases: Sequence[dict[str, Any]], methods: list[str], model: torch.nn.Module | None, args: Any, bf16: bool
) -> list[dict[str, Any]]:
    """Every method on every case (BM4D on ``--bm4d-scans`` only), a progress line per case."""
    rows: list[dict[str, Any]] = []
    progress = Progress(max(1, len(cases)))
    if "bm4d" in methods and args.bm4d_scans is not None:
        print(f"bm4d: on {', '.join(args.bm4d_scans)} only (--bm4d-scans; about 225 us per voxel on 2 busy cores)")
    for case in cases:
        own = [m for m in methods if m != "bm4d" or args.bm4d_scans is None or case["scan"] in args.bm4d_scans]
        mine = score_case(case, own, model, args.roi, args.overlap, bf16, args.quick, _guard(case, args.known_level))
        rows += mine
        progress.step(
            f"{case['scan']} {case['noise']} {case['level']:g}: PSNR head "
            + ", ".join(f"{r['method']} {r['psnr_head']:.2f}" for r in mine)
        )
    return rows


def _adapted_rows(
    cases: Sequence[dict[str, Any]], model: torch.nn.Module, args: Any, bf16: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The network adapted to each site (noise, ``--adapt`` level) and scored on it: ``(rows, adaptations)``."""
    rows: list[dict[str, Any]] = []
    adaptations = []
    for level in args.adapt:
        for noise in args.noises:
            site = [c for c in cases if c["noise"] == noise and c["level"] == float(level)]
            if not site:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                adapted, report = adapt_to_site(
                    model, site, Path(tmp), args.adapt_iterations, args.seed, args.adapt_loss, args.adapt_criterion
                )
            adaptations.append({"noise": noise, "level": float(level)} | report)
            print(f"network adapted to {noise} {level:g}: {report['reason']}", flush=True)
            for c in site:  # the adapted network raw, and through the guard as inference runs it
                for row in score_case(c, ["network", "default"], adapted, args.roi, args.overlap, bf16):
                    rows.append(row | {"method": f"{row['method']}+{args.adapt_loss}"})
    return rows, adaptations


def _setup(
    args: Any, methods: list[str], weights: str | Path | None, card: dict[str, Any], precision: str, note: str
) -> dict[str, Any]:
    """The JSON's ``setup``: how the run was made."""
    return {
        "noises": args.noises,
        "levels_255": args.levels,
        "seed": args.seed,
        "noise_seeds": "transforms.noise.item_seed(seed, '<scan>-<noise>-<level>')",
        "crop": args.crop,
        "methods": methods,
        "guard_level": "the added level, given (--known-level)" if args.known_level else "blind estimate",
        "weights": None if weights is None else str(weights),
        "network_def": card.get("network_def"),
        "roi": args.roi,
        "overlap": args.overlap,
        "precision": precision,
        "precision_note": note,
        "high_snr_rule": f"reference's own noise <= {SNR_RATIO:.3f} x added noise",
        "blind_rules": {k: list(v) for k, v in BLIND_RULES.items()},
        "classical_tuning": "blind: parameter = rule(blind noise estimate of the noisy volume); "
        "(oracle) rows: tuned on the scored case's reference, an upper bound",
        "bm4d_sigma": "estimated blind from the noisy volume",
        "bm4d_scans": args.bm4d_scans or "all",
        "intervals": "95 % percentile bootstrap over scans within each (noise, level), 2000 resamples",
        "mask": "Otsu head foreground, holes filled",
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables and the issue's targets, write the JSON.

    Args:
        argv: command-line arguments (default: ``sys.argv``).

    Returns:
        The result dict that was written.
    """
    args = _parser().parse_args(argv)
    if args.fit_blind_rules:
        fitted = fit_blind_rules()
        print(f"BLIND_RULES = {fitted['rules']}")
        return fitted
    if args.quick:
        args.scans = args.scans or ["example4d"]
        args.levels, args.crop = [15.0], args.crop or 32
        args.skip = [*args.skip, "bm4d"]
    precision, note = benchmark_precision(args.precision)
    weights = args.weights or shipped_weights()
    model, card = (None, {}) if weights is None else load_denoiser(weights)
    methods = _methods(args.skip, model)

    scans: list[RealScan] = real_scans(args.scans, args.crop)
    cases, skipped = noisy_cases(scans, args.noises, args.levels, args.seed)
    announce(
        "benchmarks.real_scans",
        f"{', '.join(methods)} on {len(scans)} real scans x {', '.join(args.noises)} x levels "
        f"{', '.join(f'{v:g}' for v in args.levels)} ({len(cases)} cases pass the high-SNR rule, "
        f"{len(skipped)} scan-levels skipped); a line per case",
        f"about {_expected_seconds(cases, methods, args.bm4d_scans) / 60:.1f} min on 2 cores",
        note if model is not None else None,
    )
    rows = _score_cases(cases, methods, model, args, precision == "bf16")
    adaptations: list[dict[str, Any]] = []
    if model is not None:
        adapted, adaptations = _adapted_rows(cases, model, args, precision == "bf16")
        rows += adapted
    diffs = differences(rows, args.seed)
    print_tables(rows, scans, diffs, skipped)
    verdicts = targets(rows)
    print(f"\nThe issue's targets (CPU: {machine_info()['cpu']})\n")
    for verdict in verdicts:
        print(verdict["text"])
    result = {
        "benchmark": "real_scans",
        "quick": args.quick,
        "command": "python -m benchmarks.real_scans "
        + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "machine": machine_info(),
        "setup": _setup(args, methods, weights, card, precision, note),
        "scans": [s.info() for s in scans],
        "skipped": skipped,
        "left_out": LEFT_OUT,
        "rows": rows,
        "adaptations": adaptations,
        "differences": diffs,
        "targets": verdicts,
    }
    print(f"wrote {write_json(result, args.out)}")
    return result
