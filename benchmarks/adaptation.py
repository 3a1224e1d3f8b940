"""Does site adaptation help, and does its guard refuse what hurts? Checked where the clean scans are known.

Run: ``python -m benchmarks.adaptation --runs RUN [RUN ...] [--sites gaussian5 rician25 ...]
[--configs n2s:blindspot n2s:sure sure:sure] [--iterations 200] [--out ...json]``.

Each ``RUN`` is a demo run folder (``python -m pipeline.demo``, or one seed of :mod:`benchmarks.demo_seeds`): its
denoiser (``models/denoiser/model.pt``) and the clean volumes of the subjects its split held out for testing (never
trained or validated on), which come from the packaged template, so they may be used here. A *site* is those volumes
with new noise (``gaussian5``: Gaussian of sigma 5 on the 0-255 scale of each volume's robust maximum; ``rician25``),
at levels the denoiser was not trained for. For each config ``LOSS:CRITERION`` (``adapt.yaml``'s ``adapt_loss`` and
guard ``criterion``) the denoiser is adapted to the site's noisy volumes exactly as :mod:`benchmarks.real_scans` does
(:func:`benchmarks.real_scans.adapt_to_site`: no clean volume is read), and both the starting and the returned network
are scored against the clean volumes (PSNR in the brain mask and over the whole volume, bundle inference).

Printed: one row per (run, site, config) with the guard's decision, the SURE estimate of the PSNR gain when the
criterion is SURE, and the true gain; then per config the accepted share, the mean true gain of what was returned
(0 when refused) with a 95 % bootstrap interval over runs and sites, and how many accepted adaptations lowered PSNR.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import announce, default_out, format_table, machine_info, noisy_copy, write_json

__all__ = ["load_site_volumes", "main", "summarise"]

_PATCH, _OVERLAP = 32, 0.25


def load_site_volumes(run: Path, split: str = "test") -> list[dict[str, Any]]:
    """The clean test volumes of a demo run (scaled to their robust maximum) with their brain masks.

    Args:
        run: a demo run folder (``cohort/``, ``splits/denoiser.json``).
        split: the denoiser split's part to read (``"test"``; ``"val"`` for choosing a recipe).

    Returns:
        ``{"scan", "clean", "mask"}`` per test subject.

    Raises:
        FileNotFoundError: the folder is not a finished demo run.
    """
    import nibabel as nib

    from transforms.intensity import robust_max

    split_file = run / "splits" / "denoiser.json"
    if not split_file.is_file():
        raise FileNotFoundError(f"{run}: no splits/denoiser.json; pass a finished demo run folder")
    volumes = []
    for subject in json.loads(split_file.read_text())[split]:
        clean = np.asarray(nib.load(run / "cohort" / "clean" / f"{subject}.nii.gz").dataobj, dtype=np.float32)
        mask = np.asarray(nib.load(run / "cohort" / "masks" / f"{subject}.nii.gz").dataobj) > 0
        volumes.append({"scan": subject, "clean": clean / robust_max(clean), "mask": mask})
    return volumes


def _parse_site(site: str) -> tuple[str, float]:
    kind = site.rstrip("0123456789.")
    if kind not in ("gaussian", "rician") or kind == site:
        raise argparse.ArgumentTypeError(f"site {site!r}: expected gaussian<level> or rician<level>, e.g. gaussian5")
    return kind, float(site[len(kind) :])


def _psnr(model: Any, cases: list[dict[str, Any]]) -> tuple[float, float]:
    """Mean PSNR (brain mask, whole volume) of ``model`` on the cases, bundle inference in float32."""
    from benchmarks.quality import denoise_with_network
    from pipeline.evaluation.metrics import volume_quality

    scores = [
        volume_quality(denoise_with_network(model, c["noisy"], _PATCH, _OVERLAP, False), c["clean"], c["mask"])
        for c in cases
    ]
    return float(np.mean([s["psnr_brain"] for s in scores])), float(np.mean([s["psnr_volume"] for s in scores]))


def summarise(rows: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Per config: accepted share, the mean true gain of the returned network (95 % bootstrap), harmful acceptances.

    Args:
        rows: the per-adaptation rows of :func:`main`.
        seed: seeds the bootstrap.

    Returns:
        One row per config.
    """
    rng = np.random.default_rng(seed)
    out = []
    for config in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == config]
        summary = {"config": config, "adaptations": len(mine), "accepted": sum(r["accepted"] for r in mine)}
        for region in ("brain", "volume"):
            gains = np.array([r[f"true gain {region}"] for r in mine])
            boot = rng.choice(gains, size=(2000, gains.size)).mean(axis=1)
            low, high = np.percentile(boot, [2.5, 97.5])
            summary[f"gain {region}"] = f"{gains.mean():+.2f} [{low:+.2f}, {high:+.2f}]"
        summary["harmful accepted"] = sum(r["accepted"] and r["true gain volume"] < 0 for r in mine)
        summary["worst accepted"] = min((r["true gain volume"] for r in mine if r["accepted"]), default=0.0)
        out.append(summary)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line; returns the result written to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="demo run folders")
    parser.add_argument("--sites", type=_parse_site, nargs="+", default=["gaussian5", "rician25"])
    parser.add_argument("--configs", nargs="+", default=["n2s:blindspot", "n2s:sure", "sure:sure"])
    parser.add_argument("--iterations", type=int, default=200, help="adaptation steps at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=default_out("adaptation"))
    args = parser.parse_args(argv)
    sites = [_parse_site(s) if isinstance(s, str) else s for s in args.sites]
    configs = [tuple(c.split(":")) for c in args.configs]

    from benchmarks.real_scans import adapt_to_site, load_denoiser
    from pipeline.training.adapt import CRITERIA, LOSSES
    from transforms.noise import item_seed

    for config in configs:
        if len(config) != 2 or config[0] not in LOSSES or config[1] not in CRITERIA:
            parser.error(f"config {':'.join(config)!r}: expected LOSS:CRITERION with LOSS in {LOSSES}, in {CRITERIA}")
    announce(
        "benchmarks.adaptation",
        f"{len(args.runs)} runs x {len(sites)} sites x {len(configs)} configs, {args.iterations} steps each",
        f"about {len(args.runs) * len(sites) * (len(configs) * 1.5 + 0.5):.0f} min on 2 cores with AVX-512",
        precision="fp32",
    )
    rows = []
    for run in args.runs:
        model, _ = load_denoiser(run / "models" / "denoiser" / "model.pt")
        volumes = load_site_volumes(run)
        for kind, level in sites:
            cases = [
                v
                | {
                    "noise": kind,
                    "level": level,
                    "noisy": noisy_copy(v["clean"], kind, item_seed(args.seed, f"{v['scan']}-{kind}{level:g}"), level),
                }
                for v in volumes
            ]
            start = _psnr(model, cases)
            for loss, criterion in configs:
                blind = [dict(c, clean=None, mask=None) for c in cases]
                with tempfile.TemporaryDirectory() as tmp:
                    adapted, report = adapt_to_site(
                        model, blind, Path(tmp), args.iterations, args.seed, loss, criterion
                    )
                after = _psnr(adapted, cases) if report["accepted"] else start
                row = {
                    "run": run.name,
                    "site": f"{kind}{level:g}",
                    "config": f"{loss}:{criterion}",
                    "accepted": report["accepted"],
                    "steps": report["iterations"],
                    "start brain": round(start[0], 2),
                    "start volume": round(start[1], 2),
                    "SURE gain": None if report["psnr_gain_db"] is None else round(report["psnr_gain_db"], 2),
                    "true gain brain": round(after[0] - start[0], 2),
                    "true gain volume": round(after[1] - start[1], 2),
                    "reason": report["reason"],
                }
                rows.append(row)
                print(format_table([row], [k for k in row if k != "reason"]), flush=True)
    summary = summarise(rows, args.seed)
    columns = ["run", "site", "config", "accepted", "steps", "start volume", "SURE gain", "true gain volume"]
    print("\nEvery adaptation (gains in dB of PSNR; a refused one returns the starting network: gain 0)\n")
    print(format_table(rows, columns))
    print("\nPer config: the returned network's true gain, 95 % interval over runs x sites\n")
    print(format_table(summary, list(summary[0])))
    result = {"benchmark": "adaptation", "machine": machine_info(), "setup": vars(args) | {"sites": args.sites}}
    result |= {"rows": rows, "summary": summary}
    write_json(json.loads(json.dumps(result, default=str)), args.out)
    return result


if __name__ == "__main__":
    main()
