"""Classical 3-D denoisers on nilearn's MNI152 T1 template: PSNR/SSIM in the brain mask and seconds per volume.

Run: ``python -m benchmarks.classical [--quick] [--size 128] [--out benchmarks/results/classical.json]``.

A ``size``^3 crop at the template's centre (1 mm, scaled to [0, 1]) gets Gaussian noise (sigma 15 on the 0-255
scale) or Poisson noise (variance = mean / 200), seeded. Compared: the noisy input, a Gaussian filter, a median
filter, SimpleITK's curvature flow, total variation (scikit-image ``denoise_tv_chambolle``), non-local means
(scikit-image ``denoise_nl_means``, ``fast_mode``, 5^3 patches searched over 7^3 offsets: the fastest and best of
three settings tried on a 64^3 crop) and BM4D (the optional ``bm4d`` package, non-commercial licence:
``pip install -e '.[bm4d]'``; skipped with a clear line when it is not installed).

Parameters: the filters' free parameter (Gaussian sigma, median size, curvature-flow iterations, TV weight) is chosen
from a small grid on a *tuning* volume - another noise realisation of a crop shifted by a quarter of its size, never
the scored volume (non-local means: its ``h`` as a multiple of the estimated sigma). Non-local means and BM4D get
the noise sigma estimated blind from the scored noisy volume (scikit-image ``estimate_sigma``), as a user without
the clean image would.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from benchmarks._common import (
    announce,
    center_crop,
    default_out,
    format_table,
    load_template,
    machine_info,
    noisy_copy,
    write_json,
)
from pipeline.evaluation.classical import CLASSICAL_DENOISERS, bm4d_available, tune
from pipeline.evaluation.metrics import masked_psnr, masked_ssim

__all__ = ["METHODS", "bm4d_available", "chosen_text", "evaluate_methods", "main"]

#: The compared methods, in table order: the noisy input, then the library's classical denoisers
#: (:data:`pipeline.evaluation.classical.CLASSICAL_DENOISERS`, with their grids and tuning), so the demo and the
#: benchmark agree.
METHODS: tuple[str, ...] = ("noisy", *CLASSICAL_DENOISERS)


def _choose(name: str, volumes: tuple[np.ndarray, np.ndarray, np.ndarray], quick: bool) -> Any:
    """The parameter of ``name`` tuned on one ``(noisy, clean, mask)`` volume (``None`` for the noisy input)."""
    if name == "noisy":
        return None
    noisy, clean, mask = volumes
    return tune(name, [{"noisy": noisy, "clean": clean, "mask": mask}], quick=quick)[0]


def _run(name: str, noisy: np.ndarray, param: Any) -> np.ndarray:
    return noisy if name == "noisy" else CLASSICAL_DENOISERS[name](noisy, param)


def evaluate_methods(
    cases: list[dict[str, Any]],
    tuning: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    quick: bool = False,
    skip: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Tune each method per noise kind (:func:`pipeline.evaluation.classical.tune`), then score it on every case.

    Scores are the pipeline's (:func:`pipeline.evaluation.metrics.masked_psnr` and ``masked_ssim``: Gaussian
    7^3 window) inside each case's mask, on the [0, 1] scale.

    Args:
        cases: dicts with ``noise`` (kind name), ``volume`` (case name), ``noisy``, ``clean`` and ``mask`` arrays.
        tuning: ``{noise kind: (noisy, clean, mask)}`` volumes used only to choose parameters.
        quick: use the quick grids.
        skip: method names to leave out.

    Returns:
        One row per (method, case): ``method``, ``noise``, ``volume``, ``param``, ``psnr``, ``ssim``, ``seconds``
        (wall) and ``cpu_seconds`` (this process's CPU time, all threads).
    """
    rows = []
    for name in METHODS:
        if name in skip:
            continue
        if name == "bm4d" and not bm4d_available():
            print("bm4d: skipped - the optional 'bm4d' package is not installed (pip install -e '.[bm4d]')")
            continue
        chosen = {kind: _choose(name, volumes, quick) for kind, volumes in tuning.items()}
        for case in cases:
            param = chosen[case["noise"]]
            start, cpu_start = time.perf_counter(), time.process_time()
            out = _run(name, case["noisy"], param)
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            rows.append(
                {
                    "method": name,
                    "noise": case["noise"],
                    "volume": case["volume"],
                    "param": None if param is None else f"{CLASSICAL_DENOISERS[name].param}={param}",
                    "psnr": round(masked_psnr(out, case["clean"], case["mask"]), 2),
                    "ssim": round(masked_ssim(out, case["clean"], case["mask"]), 4),
                    "seconds": round(seconds, 3),
                    "cpu_seconds": round(cpu_seconds, 3),
                }
            )
        print(f"{name}: scored {len(cases)} volumes ({chosen_text(chosen)})", flush=True)
    return rows


def chosen_text(chosen: dict[str, Any]) -> str:
    """The tuned parameter per noise kind, for progress lines.

    Args:
        chosen: ``{noise kind: parameter}``.

    Returns:
        e.g. ``"gaussian: 1.0, poisson: 0.75"``.
    """
    return ", ".join(f"{kind}: {value}" for kind, value in chosen.items())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table and ratios, write the JSON.

    Args:
        argv: command-line arguments (default: ``sys.argv``).

    Returns:
        The result dict that was written.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32^3 crop and short grids: a smoke run in seconds")
    parser.add_argument("--size", type=int, default=128, help="edge of the cubic template crop (voxels)")
    parser.add_argument("--skip", nargs="*", default=[], help="method names to leave out, e.g. bm4d")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(default_out("classical")))
    args = parser.parse_args(argv)
    size = 32 if args.quick else args.size
    methods = [m for m in METHODS if m not in args.skip]
    slow = "bm4d" in methods and bm4d_available()
    announce(
        "benchmarks.classical",
        f"{', '.join(methods)} on a {size}^3 crop of the MNI152 T1, Gaussian and Poisson noise, parameters tuned on"
        " another crop; a line per method",
        "seconds (the smoke run)"
        if args.quick
        else f"a few minutes on 2 cores at 128^3{', BM4D tens of minutes more' if slow else ''}, more for larger crops",
    )

    t1, brain = load_template()
    center = [int(np.mean(ix)) for ix in np.nonzero(brain)]
    test_sl = center_crop(t1, size, center)
    tune_center = [c + size // 4 for c in center]
    tune_sl = center_crop(t1, size, tune_center)
    cases, tuning = [], {}
    for i, kind in enumerate(("gaussian", "poisson")):
        clean, mask = t1[test_sl], brain[test_sl]
        cases.append(
            {
                "noise": kind,
                "volume": f"mni152_{size}",
                "noisy": noisy_copy(clean, kind, args.seed + i),
                "clean": clean,
                "mask": mask,
            }
        )
        tclean = t1[tune_sl]
        tuning[kind] = (noisy_copy(tclean, kind, args.seed + 100 + i), tclean, brain[tune_sl])

    rows = evaluate_methods(cases, tuning, quick=args.quick, skip=tuple(args.skip))
    print(format_table(rows, ["method", "noise", "param", "psnr", "ssim", "seconds", "cpu_seconds"]))
    ratios = _ratios(rows)
    for key, value in ratios.items():
        print(f"{key}: {value}")
    result = {
        "benchmark": "classical",
        "quick": args.quick,
        "machine": machine_info(),
        "setup": {
            "volume": f"MNI152 2009 T1 (nilearn, 1 mm), {size}^3 crop at the brain's centre, scaled to [0, 1]",
            "noise": {"gaussian": "sigma 15/255", "poisson": "Poisson(x*200)/200"},
            "mask": "nilearn load_mni152_brain_mask",
            "tuning": "grid search on another noise realisation of a crop shifted by size/4 on each axis",
        },
        "rows": rows,
        "ratios": ratios,
    }
    write_json(result, args.out)
    print(f"wrote {args.out}")
    return result


def _ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Headline comparisons: NLM and BM4D gains over the noisy input and over the best cheap filter."""
    out: dict[str, Any] = {}
    for kind in sorted({r["noise"] for r in rows}):
        by = {r["method"]: r for r in rows if r["noise"] == kind}
        if "noisy" in by and "nl_means" in by:
            out[f"{kind}: nl_means gain over noisy (dB)"] = round(by["nl_means"]["psnr"] - by["noisy"]["psnr"], 2)
        if "bm4d" in by and "nl_means" in by:
            out[f"{kind}: bm4d - nl_means (dB)"] = round(by["bm4d"]["psnr"] - by["nl_means"]["psnr"], 2)
            out[f"{kind}: bm4d seconds / nl_means seconds"] = round(
                by["bm4d"]["seconds"] / max(by["nl_means"]["seconds"], 1e-9), 1
            )
    return out


if __name__ == "__main__":
    main()
