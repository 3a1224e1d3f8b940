"""Data loading: the training loader's samples/s against the training step's samples/s, measured in one process.

Run: ``python -m benchmarks.loading [--quick] [--subjects 8] [--out benchmarks/results/loading.json]``.

Data: a demo cohort (``pipeline.data.cohort.build_cohort``, 2 mm, 80 x 96 x 80 volumes) written to a temporary folder.
Chain: the project's training preprocessing ``transforms.presets.denoise_transforms(stage="train", patch_size=32,
noise="gaussian", level=(5, 25), num_samples=4)`` - load the NIfTI, reorient, percentile-scale, (augment), add
noise, rescale, brain mask, crop to the brain, ``--per-volume`` brain-weighted random 32^3 patches per volume (the
demo's patch; ``benchmarks.quality`` trains on 4 from each noisy volume) - with and without ``augment=True``.
Loaders (``--batch`` patches per batch, shuffled, ``--samples`` patches each):

* ``Dataset`` + ``DataLoader`` with 0 and 2 worker processes: every item is read and decompressed every time;
* ``CacheDataset`` (the deterministic prefix - load, reorient, scale - kept in memory; cache build time reported
  apart) + ``ThreadDataLoader`` (``num_workers=0`` and ``1``).

The step rate is the demo's ResUnet3D (``pipeline.demo.run.DemoSettings.denoiser``) training step at the same patch
and batch (forward, L1, backward, Adam), in float32 and, on a CPU with native bf16 (the rule of ``precision: auto``),
in bf16 autocast (the faster one is the reference), measured in the same process right after. Target: the loader
delivers >= 3x the step's samples/s. The run starts with what it will measure, the CPU and an estimate of its
duration, and prints a line per loader and per step rate.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import (
    Progress,
    announce,
    benchmark_precision,
    build_denoiser,
    default_out,
    expected_duration,
    format_table,
    machine_info,
    write_json,
)
from benchmarks.throughput import training_step_rate

__all__ = ["loader_rate", "main"]


def loader_rate(loader: Any, samples: int) -> float:
    """Samples per second a loader delivers (restarting its iterator as needed until ``samples`` are drawn).

    Args:
        loader: an iterable of batches (dicts whose ``"image"`` is a (B, C, H, W, D) tensor).
        samples: samples to draw.

    Returns:
        Samples per second.
    """
    count = 0
    start = time.perf_counter()
    while count < samples:
        for batch in loader:
            count += int(batch["image"].shape[0])
            if count >= samples:
                break
    return count / (time.perf_counter() - start)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 4 subjects at 4 mm, 16^3 patches, 4 samples, 2 loaders, small network, 1 timed step",
    )
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--samples", type=int, default=32, help="patches drawn per loader")
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4, help="patches per batch")
    parser.add_argument("--per-volume", type=int, default=4, help="patches cut from each noisy volume")
    parser.add_argument("--out", default=str(default_out("loading")))
    return parser


def _loader_setups(items: list, volumes: int, quick: bool) -> list[tuple[str, Any]]:
    """``(name, make(transform) -> loader)`` per loader; ``None`` marks the cached ones (built with their cache)."""
    from monai.data import DataLoader, Dataset

    setups = [
        ("Dataset + DataLoader, 0 workers", lambda t: DataLoader(Dataset(items, t), batch_size=volumes, shuffle=True)),
        (
            "Dataset + DataLoader, 2 workers",
            lambda t: DataLoader(Dataset(items, t), batch_size=volumes, shuffle=True, num_workers=2),
        ),
        ("CacheDataset + ThreadDataLoader, 0 workers", None),
        ("CacheDataset + ThreadDataLoader, 1 thread", None),
    ]
    return [setups[0], setups[2]] if quick else setups  # the smoke run: one uncached and one cached loader


def _loader_rows(items: list, args: argparse.Namespace, sizes: tuple[int, int, int], progress: Progress) -> list:
    """Samples/s of every loader, without and with augmentation (``sizes``: volumes per batch, samples, patch)."""
    from monai.data import CacheDataset, ThreadDataLoader

    from transforms.presets import denoise_transforms

    volumes, samples, patch = sizes
    rows = []
    for augment in (False,) if args.quick else (False, True):
        chain = dict(stage="train", patch_size=patch, noise="gaussian", level=(5.0, 25.0), augment=augment)
        for name, make in _loader_setups(items, volumes, args.quick):
            transform = denoise_transforms(**chain, num_samples=args.per_volume)
            cache_s = 0.0
            if make is None:
                start = time.perf_counter()
                dataset = CacheDataset(items, transform, cache_rate=1.0, num_workers=0, progress=False)
                cache_s = time.perf_counter() - start
                workers = 1 if "1 thread" in name else 0
                loader = ThreadDataLoader(dataset, batch_size=volumes, shuffle=True, num_workers=workers)
            else:
                loader = make(transform)
            rate = loader_rate(loader, samples)
            rows.append({"loader": name, "augment": augment, "samples_per_s": rate, "cache_build_s": cache_s})
            progress.step(f"{name}, augment={augment}: {rate:.2f} samples/s")
    return rows


def _step_rates(precisions: tuple[str, ...], patch: int, args: argparse.Namespace, progress: Progress) -> dict:
    """The denoiser's training step rate in each precision (the quick run: the small network)."""
    from pipeline.demo.run import DemoSettings

    # the quick run's step: the small network (its stride-2 stem), not the demo's full-resolution one
    denoiser = {} if args.quick else dict(DemoSettings().denoiser)
    size = "small" if args.quick else "default"
    steps = {}
    for precision in precisions:
        network = build_denoiser("resunet3d", size, **denoiser)
        steps[precision] = training_step_rate(
            network, patch, args.batch, steps=1 if args.quick else 5, bf16=precision == "bf16"
        )
        progress.step(f"ResUnet3D {precision} step: {steps[precision]['samples_per_s']:.2f} samples/s")
        print(f"ResUnet3D ({size}) {precision} step at {patch}^3, batch {args.batch}", flush=True)
    return steps


def _ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    best = max(rows, key=lambda r: r["samples_per_s"])
    cached = next(r for r in rows if r["loader"].startswith("CacheDataset") and not r["augment"])
    return {
        "uncached (0 workers) / step rate": round(rows[0]["ratio_to_step_rate"], 2),
        "best loader / step rate (target >= 3)": round(best["ratio_to_step_rate"], 2),
        "best loader": f"{best['loader']} (augment={best['augment']})",
        "cached / uncached (0 workers, no augmentation)": round(cached["samples_per_s"] / rows[0]["samples_per_s"], 2),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table and ratios, write the JSON.

    Args:
        argv: command-line arguments (default: ``sys.argv``).

    Returns:
        The result dict that was written.
    """
    from pipeline.data.cohort import CohortParameters, build_cohort
    from pipeline.data.datasets import clean_folder

    args = _parser().parse_args(argv)
    subjects, samples, patch = (4, 4, 16) if args.quick else (args.subjects, args.samples, args.patch)
    if args.per_volume < 1 or args.batch % args.per_volume:
        raise ValueError(f"--per-volume must be >= 1 and divide --batch ({args.batch}), got {args.per_volume}")
    params = CohortParameters(spacing=4.0) if args.quick else CohortParameters()
    torch.manual_seed(0)
    auto, note = benchmark_precision("auto")
    precisions = ("fp32", "bf16") if auto == "bf16" else ("fp32",)
    if auto != "bf16":
        note += "; the bf16 step rate is left out (emulated here, about 40x slower)"
    loaders = (1 if args.quick else 2) * (2 if args.quick else 4)
    announce(
        "benchmarks.loading",
        f"a {subjects}-subject cohort at {params.spacing:g} mm, {loaders} loader runs of {samples} {patch}^3 patches,"
        f" then the {'small' if args.quick else 'demo'} denoiser's training step rate in {' and '.join(precisions)}",
        # quick: CPU seconds on the 2-core Xeon (AMX) / 1.5; the full run: the README's loaders and steps
        expected_duration(22, 10) if args.quick else expected_duration(60, 70),
        note,
    )
    progress = Progress(1 + loaders + len(precisions))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cohort = build_cohort(Path(tmp) / "cohort", n_subjects=subjects, seed=0, params=params, noisy=False)
        build_s = time.perf_counter() - start
        progress.step(f"cohort: {subjects} subjects, {tuple(cohort.shape)} voxels at {params.spacing:g} mm")
        items = clean_folder(cohort.folders["clean"])
        rows = _loader_rows(items, args, (args.batch // args.per_volume, samples, patch), progress)
    steps = _step_rates(precisions, patch, args, progress)
    step = max(steps.values(), key=lambda r: r["samples_per_s"])
    for row in rows:
        row["ratio_to_step_rate"] = row["samples_per_s"] / step["samples_per_s"]
    print(f"\ncohort: {subjects} subjects, {tuple(cohort.shape)} voxels at {params.spacing:g} mm ({build_s:.1f} s)\n")
    print(format_table(rows, ["loader", "augment", "samples_per_s", "cache_build_s", "ratio_to_step_rate"]))
    ratios = _ratios(rows)
    for key, value in ratios.items():
        print(f"{key}: {value}")
    setup = {"subjects": subjects, "spacing_mm": params.spacing, "patch": patch, "batch": args.batch}
    setup.update(per_volume=args.per_volume, precision_note=note)
    result = {"benchmark": "loading", "quick": args.quick, "machine": machine_info(), "setup": setup}
    result.update(step=step, steps=steps, rows=rows, ratios=ratios)
    write_json(result, args.out)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
