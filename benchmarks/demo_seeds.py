"""The demo's denoising figures over seeds: does ResUnet3D beat non-local means, in the brain and over the volume?

Run: ``python -m benchmarks.demo_seeds [--seeds 0 1 2] [--confirm 10 11 12 13 14] [--work runs/demo_seeds]
[--out ...json] [--quick] [--set noise_range=[5,25] ...]``.

Two kinds of seeds, which must not overlap (both are recorded in the JSON):

- **selection** seeds (``--seeds``), on which a recipe is chosen or justified (the demo's 160 epochs were chosen on
  seeds 0-2): only their *validation* volumes are scored (the cohort's val subjects, which neither trained the
  denoiser nor chose its epoch; the classical filters' parameters were tuned on the first ``tuning_subjects`` of
  them, which favours the filters, not the network). Their test volumes are not reported.
- **confirmation** seeds (``--confirm``), which chose nothing: the test figures, and the verdict "beats", come only
  from them.

For each seed, :func:`pipeline.demo.run.run_demo` runs the default demo (``make demo``'s settings, that seed: a new
cohort, split, weights and data order) with one classifier epoch instead of 24, since the classifiers come after
the denoiser and change none of its figures; ``--set NAME=JSON`` changes any other
:class:`~pipeline.demo.run.DemoSettings` field, to compare a recipe at equal budget. It then reads each run's
``results.json`` and prints, per seed and pooled, every method's PSNR in the brain mask and over the whole volume on
the held-out test volumes, and the differences ResUnet3D - non-local means and ResUnet3D - best Gaussian filter with
95 % intervals (two-level bootstrap over seeds and test volumes, :func:`pipeline.evaluation.stats.paired_difference`,
and a t interval over the seeds; "beats" needs both above 0, and fewer than 5 seeds are marked underpowered). The
classical filters are tuned on each cohort's validation subjects, as in the demo. Finished seeds are reused (the demo
resumes). The full run (3 + 5 seeds) takes about 16 min per seed on 2 cores with native bf16 (2.1 h), about 30 min
per seed at 1 thread on an AVX2 core.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import announce, default_out, format_table, machine_info, write_json

__all__ = ["collect", "main", "validation_results"]

_METHODS = ("noisy", "gaussian", "median", "nl_means", "resunet3d")
#: Seeds a claim needs (the study's rule for its arms): with fewer, the differences are marked underpowered.
MIN_SEEDS = 5
_REGIONS = ("psnr_brain", "psnr_volume")


def _rounded(value: float) -> float | None:
    """``value`` to 2 decimals, ``None`` where it is not finite (a t bound of one seed)."""
    return round(float(value), 2) if np.isfinite(value) else None


def _table(results: list[dict[str, Any]], method: str, region: str) -> np.ndarray:
    """A (seeds, test volumes) table of one method's PSNR in one region."""
    return np.array([[v[region] for v in r["denoising"][method]["per_volume"]] for r in results])


def collect(results: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Per-seed means, pooled means and the paired differences of ResUnet3D against the classical filters.

    Args:
        results: the demo's ``results.json`` of each seed.
        seeds: the seeds, in the same order.

    Returns:
        ``{"per_seed": rows, "differences": rows}``; a difference row holds the estimate, its 95 % two-level
        bootstrap interval (``low``, ``high``), its 95 % t interval over the seeds (``t_low``, ``t_high``, n - 1
        degrees of freedom), ``beats`` (both intervals above 0) and ``underpowered`` (fewer than
        :data:`MIN_SEEDS` seeds: read ``beats`` as provisional).
    """
    from pipeline.evaluation.stats import paired_difference, seed_t_interval

    per_seed = []
    for seed, result in zip(seeds, results, strict=True):
        den = result["denoising"]
        row = {"seed": seed}
        for method in (m for m in _METHODS if m in den):
            for region in _REGIONS:
                row[f"{method} {region[5:]}"] = round(den[method]["mean"][region], 2)
        per_seed.append(row)
    differences = []
    for other in ("nl_means", "gaussian"):
        for region in _REGIONS:
            arm, base = _table(results, "resunet3d", region), _table(results, other, region)
            estimate, low, high = paired_difference(arm, base)
            _, t_low, t_high = seed_t_interval(arm - base)
            differences.append(
                {"contrast": f"resunet3d - {other}", "region": region[5:], "mean dB": round(estimate, 2)}
                | {"low": round(low, 2), "high": round(high, 2), "t_low": _rounded(t_low), "t_high": _rounded(t_high)}
                | {"beats": bool(low > 0 and t_low > 0), "underpowered": len(seeds) < MIN_SEEDS}
            )
    return {"per_seed": per_seed, "differences": differences}


def validation_results(out: Path, settings: Any) -> dict[str, Any]:
    """A finished demo run's methods scored on its cohort's *val* volumes, shaped as ``results.json`` (``denoising``).

    The denoiser (best validation epoch, from its own validation subjects inside the train part) runs through
    ``inference.yaml`` into ``<out>/denoised_val``; the classical filters are tuned as in the demo.
    """
    from pipeline.demo import scoring, stages
    from pipeline.evaluation.metrics import volume_quality

    cohort = stages.cohort_stage(out, settings, True, stages.StageRecord("cohort", 0.0, 0.0))
    seconds = stages.denoise_subjects(out, settings, cohort, part="val", folder="denoised_val")
    cases = [scoring.load_case(cohort.dir, cohort.noise_dir, s) for s in cohort.parts["val"]]
    quality = {"noisy": [{**volume_quality(c["noisy"], c["clean"], c["mask"]), "seconds": 0.0} for c in cases]}
    quality.update(scoring.score_classical(settings, cases, cases[: settings.tuning_subjects])[0])
    quality["resunet3d"] = scoring.score_network(out, cases, seconds, folder="denoised_val")[0]
    return {
        "subjects": cohort.parts["val"],
        "denoising": {k: {"mean": scoring.mean_quality(v), "per_volume": v} for k, v in quality.items()},
    }


def _finished_or_run(folder: Path, settings: Any) -> dict[str, Any]:
    """The ``results.json`` of a demo finished in ``folder`` with these settings, else the demo run (or resumed)."""
    from pipeline.demo.run import run_demo

    results = folder / "results.json"
    if results.is_file():
        found = json.loads(results.read_text(encoding="utf-8"))
        if found.get("settings") == json.loads(json.dumps(settings.to_dict(), default=str)) and "denoising" in found:
            print(f"seed {settings.seed}: finished in {folder}, its results reused")
            return found
    return run_demo(folder, settings)


def _print_summary(title: str, summary: dict[str, Any]) -> None:
    methods = [c for c in summary["per_seed"][0] if c != "seed"]
    print(f"\nPSNR (dB) on each {title} (mean)\n")
    print(format_table(summary["per_seed"], ["seed", *methods]))
    print("\nResUnet3D minus each classical filter, 95 % intervals: bootstrap over seeds and volumes, t over seeds\n")
    columns = ["contrast", "region", "mean dB", "low", "high", "t_low", "t_high", "beats", "underpowered"]
    print(format_table(summary["differences"], columns))


def _settings(parser: argparse.ArgumentParser, pairs: list[str]) -> dict[str, Any]:
    """``NAME=JSON`` pairs as DemoSettings fields (a parser error names a bad one)."""
    from pipeline.demo.run import DemoSettings

    fields = {f.name for f in dataclasses.fields(DemoSettings)}
    changes = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in fields:
            parser.error(f"--set {pair!r}: expected NAME=JSON with NAME one of {sorted(fields)}")
        try:
            changes[name] = json.loads(value)
        except json.JSONDecodeError as error:
            parser.error(f"--set {pair!r}: the value is not JSON ({error})")
    return changes


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line; returns the result written to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds", type=int, nargs="*", default=[0, 1, 2], help="selection seeds (validation only; none: skip them)"
    )
    parser.add_argument(
        "--confirm", type=int, nargs="*", default=[10, 11, 12, 13, 14], help="confirmation seeds (test figures), fresh"
    )
    parser.add_argument("--work", type=Path, default=Path("runs/demo_seeds"), help="one demo folder per seed")
    parser.add_argument("--out", type=Path, default=default_out("demo_seeds"))
    parser.add_argument("--quick", action="store_true", help="the demo's --quick settings (a smoke run)")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="NAME=JSON", help="DemoSettings changes, e.g. noise_range=[5,25]"
    )
    args = parser.parse_args(argv)
    if not args.seeds and not args.confirm:
        parser.error("give selection --seeds, confirmation --confirm seeds, or both")
    if set(args.seeds) & set(args.confirm):
        parser.error(f"--confirm {args.confirm} must not share a seed with the selection --seeds {args.seeds}")

    from pipeline.demo.run import DEFAULT, QUICK

    base = QUICK if args.quick else dataclasses.replace(DEFAULT, classifier_epochs=1, heldout_subjects=4)
    base = dataclasses.replace(base, **_settings(parser, args.set))
    seeds = [*args.seeds, *args.confirm]
    announce(
        "benchmarks.demo_seeds",
        f"the demo's denoiser for selection seeds {args.seeds} (validation volumes) and confirmation seeds "
        f"{args.confirm} (test volumes), 1 classifier epoch",
        f"about 16 min per seed on 2 cores ({len(seeds) * 16} min)" if not args.quick else "about 1 min per seed",
        precision="fp32",
    )
    runs = {seed: _finished_or_run(args.work / f"seed{seed}", dataclasses.replace(base, seed=seed)) for seed in seeds}
    selection = [
        validation_results(args.work / f"seed{seed}", dataclasses.replace(base, seed=seed)) for seed in args.seeds
    ]
    result = {
        "machine": machine_info(),
        "selection_seeds": args.seeds,
        "confirmation_seeds": args.confirm,
        "settings": base.to_dict(),
    }
    if args.seeds:
        subjects = {"volumes": "val", "subjects": [r["subjects"] for r in selection]}
        result["selection"] = collect(selection, args.seeds) | subjects
        _print_summary("selection seed's validation volumes", result["selection"])
    if args.confirm:
        result["confirmation"] = collect([runs[s] for s in args.confirm], args.confirm) | {"volumes": "test"}
        _print_summary("confirmation seed's test volumes", result["confirmation"])
    result["demo_seconds"] = {seed: round(r["total_wall_s"], 1) for seed, r in runs.items()}
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
