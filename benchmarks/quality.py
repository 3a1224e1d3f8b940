"""Quality vs. time: classical denoisers and four networks trained alike, on held-out cohort volumes and a real scan.

Run: ``python -m benchmarks.quality [--quick] [--minutes 10] [--resunet-minutes 60]
[--out benchmarks/results/quality.json]``.

Data: a demo cohort (``pipeline.data.cohort.build_cohort``: subjects warped from nilearn's MNI152 template, 2 mm,
80 x 96 x 80, skull-stripped) in a temporary folder. Its subject-level split (``subjects.csv``) gives the training
subjects, one validation subject (used only to tune the classical filters' parameters) and the held-out test
subjects, whose ``gaussian15/`` (sigma 15/255 of the robust maximum) and ``poisson/`` (200 photons at it) files are
scored, and a Rician copy of each (the cohort has no Rician folder): the magnitude of the clean scan plus complex
Gaussian noise of sigma 15/255 of the robust maximum per channel (``benchmarks._common.noisy_copy``), seeded per
subject from ``--seed`` (:func:`transforms.noise.item_seed` of ``<subject>-rician15``). Scores are on the clean scan's
robust-maximum scale (the 99.5th percentile of its non-zero voxels = 1, the noise levels' own reference): PSNR with
data range 1 and SSIM, both inside the cohort's brain mask. The validation subject's volumes of all three noise kinds
tune the classical filters, one parameter per kind.

The real scan of another person: ``nibabel/tests/data/anatomical.nii`` (a T1 of a real head, 2 mm, 33 x 41 x 25,
not skull-stripped, with its own noise, estimated and reported); it is scaled to [0, 1] by its 0.5th/99.5th
percentiles, gets sigma 15/255 Gaussian, 200-count Poisson or sigma 15/255 Rician noise (seeded), and the original
is the reference; the mask is its Otsu head foreground.

Networks: MONAI UNet, BasicUNet, FlexibleUNet(resnet18) and ResUnet3D (``benchmarks._common.build_denoiser``;
ResUnet3D in the demo's configuration, ``pipeline.demo.run.DemoSettings.denoiser``: depth 10, levels 3, 16-128
channels, a full-resolution 3^3 stem, residual output; ``--resunet`` overrides it), each trained with the same seed,
data, order, settings and time budget (``--minutes``; evaluation pauses the clock). ``--resunet-minutes`` trains
ResUnet3D once more, alone, for a longer budget: the run compared with BM4D. The budget is counted in this
process's CPU minutes (``time.process_time``: all its threads, so on 2 cores one idle wall minute is up to 2 CPU
minutes) so that other jobs on a shared machine do not shrink it; ``--clock wall`` counts wall-clock minutes
instead, and both are reported.

Training, the same for every network, runs on the pipeline's MONAI ``SupervisedTrainer``
(:func:`pipeline.training.denoise.build_denoise_trainer`, the training assembly of the bundle and ``train_denoiser``),
with :class:`pipeline.training.handlers.TimeBudget` keeping the clock, setting the learning rate by it, scoring at the
checkpoints and stopping at the budget, and :class:`pipeline.training.handlers.NonFiniteLossGuard` stopping a run whose
loss turns non-finite: Adam (peak lr 3e-3, ``--lr``) annealed to 0 over the budget by a cosine of the clock
(``--schedule``), L1 loss on float32 predictions, ``--precision auto`` (the project's rule,
:mod:`pipeline.utils.precision`: bf16 autocast on a CPU with native bf16, about 2.5x more steps per CPU minute than
float32 on a 2-core AMD EPYC with AVX512-BF16; float32 elsewhere, where bf16 is emulated and about 40x slower), batches
of 4 patches of 32^3 (``--batch``, ``--patch``), 4 cut from each noisy volume (``--samples``: the noise and
augmentations are drawn on the whole volume, so sharing them keeps the loader ahead of the steps), from
``transforms.presets.denoise_transforms(stage="train", augment=True)`` (bias field, contrast, intensity scale,
resolution (Gaussian blur), left-right flips); a third of the volumes get Gaussian noise of sigma uniform in
[5, 30]/255, a third Poisson noise of 50-1000 photons and a third Rician noise of sigma uniform in [5, 30]/255 per
channel (:data:`TRAINING_NOISE`); cached with ``CacheDataset`` and served by ``ThreadDataLoader``. A network whose loss
becomes non-finite is trained again from the start at a third of the learning rate, then in float32 at both (MONAI's
UNet diverges in bf16 at 3e-3, 1e-3 and 3e-4, not in float32); the rows and tables give the learning rate and
precision each run trained with. The cohort has no skull (the template is skull-stripped), so "with and without skull"
cannot be augmented from the shipped data. At each checkpoint (``--checkpoints`` minutes) every network denoises the
test volumes as the bundle does (input scaled by its own 99.5th percentile, sliding window of ``--patch`` tiles, 4 per
pass, Gaussian blending, ``torch.inference_mode``, the training precision) with overlap 0.25 (``--overlap``).

The settings were chosen on ResUnet3D with 5-minute pilots on the same cohort (mean test PSNR, Gaussian 15, 1
thread): float32 64^3 x 2 at lr 1e-3 25.1 dB (114 steps); bf16 27.4; bf16 at lr 3e-3 28.6; 32^3 x 4 patches 28.3;
32^3 x 4 from one volume at lr 3e-3 29.9 (988 steps; 32-256 channels: 29.9); instance norm 28.8 at 2 minutes (batch
norm 29.6); 96^3 evaluation tiles instead of 32^3: no gain (29.90 vs 29.93).
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine

from benchmarks._common import (
    announce,
    benchmark_precision,
    build_denoiser,
    bundle_resunet_config,
    default_out,
    expected_duration,
    load_real_scan,
    machine_info,
    noisy_copy,
    write_json,
)
from benchmarks.classical import bm4d_available, evaluate_methods
from benchmarks.quality_report import NOISES, collect, print_tables, ratios
from pipeline.errors import NonFiniteLossError
from pipeline.evaluation.classical import OUTPUT_FLOOR
from pipeline.evaluation.metrics import masked_psnr, masked_ssim
from pipeline.inference.within import PairSingles, predict_within
from pipeline.runtime.precision import ChannelsLastInferer, memory_format
from pipeline.training.denoise import build_denoise_trainer
from pipeline.training.handlers import NonFiniteLossGuard, TimeBudget
from transforms.intensity import robust_max

__all__ = [
    "NETWORKS",
    "NOISES",
    "RICIAN_LEVEL",
    "TRAINING_NOISE",
    "Diverged",
    "denoise_with_network",
    "main",
    "train_with_checkpoints",
]

NETWORKS = ("unet", "basicunet", "flexibleunet", "resunet3d")
#: Rician sigma of the scored volumes on the 0-255 scale of the robust maximum (the cohort's Gaussian level).
RICIAN_LEVEL = 15.0
#: The training noise, one third of the volumes each: (name, level range in ``transforms.noise.make_noise``'s units).
TRAINING_NOISE: tuple[tuple[str, tuple[float, float]], ...] = (
    ("gaussian", (5.0, 30.0)),
    ("poisson", (50.0, 1000.0)),
    ("rician", (5.0, 30.0)),
)
_MAX_EPOCHS = 10**9  # the time budget, not the epochs, ends training


class Diverged(RuntimeError):
    """A network's training loss became non-finite (it is trained again at a lower learning rate)."""


def denoise_with_network(
    model: torch.nn.Module,
    noisy: np.ndarray,
    patch: int,
    overlap: float = 0.5,
    bf16: bool = False,
    floor: float | None = OUTPUT_FLOOR,
    where: np.ndarray | None = None,
    channels_last: bool = True,
) -> np.ndarray:
    """Denoise one (H, W, D) volume as the bundle's inference does, returning it on the input's scale.

    The input is divided by its own robust maximum (what ``ScalePercentiled`` does at inference), run through
    ``sliding_window_inference`` (``patch``^3 tiles, 4 per pass, Gaussian blending) under
    ``torch.inference_mode``, channels-last as ``inference.yaml`` does by default, multiplied back and floored
    (``inference.yaml``'s ``output_min``).

    Args:
        model: the network (put in eval mode here).
        noisy: the volume.
        patch: tile edge (voxels).
        overlap: sliding-window overlap (the bundle's is 0.5).
        bf16: run the network under ``torch.autocast`` in bfloat16 (blending stays float32).
        floor: outputs below it are set to it; ``None`` keeps them.
        where: compute only the windows that touch this mask (the guard's second pass,
            :func:`pipeline.inference.within.predict_within`); the output is exact there only.
        channels_last: convert the network (in place; same weights) and each window batch to ``channels_last_3d``.

    Returns:
        The denoised float32 volume (H, W, D).
    """
    from monai.inferers import SlidingWindowInferer

    model.eval().to(memory_format=memory_format(channels_last))
    scale = robust_max(noisy)
    x = torch.from_numpy(np.ascontiguousarray(noisy / scale, dtype=np.float32))[None, None]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        inferer = SlidingWindowInferer(patch, 4, overlap=overlap, mode="gaussian")
        inferer = ChannelsLastInferer(inferer) if channels_last else inferer
        if where is None:
            out = inferer(x, PairSingles(model)).float()
        else:
            out = predict_within(inferer, model, x, torch.from_numpy(np.asarray(where))).float()
    denoised = out[0, 0].numpy() * scale
    return denoised if floor is None else np.maximum(denoised, floor)


def _cohort_cases(
    cohort: Any, seed: int = 0
) -> tuple[list[dict[str, Any]], dict[str, tuple], list[dict[str, Any]], list[str]]:
    """Read the cohort's split: test cases, classical tuning volumes (one val subject), training items, test IDs.

    Gaussian and Poisson volumes are the cohort's files; the Rician ones are made here from the scaled clean scan
    (:func:`benchmarks._common.noisy_copy`, sigma :data:`RICIAN_LEVEL`/255), seeded per subject from ``seed``.
    """
    import nibabel as nib

    from transforms.noise import item_seed

    with open(cohort.subjects_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    split = {r["subject_id"]: r["split"] for r in rows}
    folders = {k: Path(v) for k, v in cohort.folders.items()}
    noisy_dirs = {
        "gaussian": next(v for k, v in folders.items() if k.startswith("gaussian")),
        "poisson": folders["poisson"],
    }

    def load(folder: Path, subject: str) -> np.ndarray:
        return np.asarray(nib.load(folder / f"{subject}.nii.gz").get_fdata(), dtype=np.float32)

    def case(subject: str, kind: str) -> dict[str, Any]:
        clean = load(folders["clean"], subject)
        ref = robust_max(clean)
        mask = load(folders["masks"], subject) > 0.5
        clean = clean / ref
        if kind == "rician":
            noisy = noisy_copy(clean, "rician", item_seed(seed, f"{subject}-rician{RICIAN_LEVEL:g}"), RICIAN_LEVEL)
        else:
            noisy = load(noisy_dirs[kind], subject) / ref
        return {"noise": kind, "volume": subject, "noisy": noisy, "clean": clean, "mask": mask}

    test = sorted(s for s, p in split.items() if p == "test")
    val = sorted(s for s, p in split.items() if p == "val")
    train = sorted(s for s, p in split.items() if p == "train")
    cases = [case(s, kind) for kind in NOISES for s in test]
    tuning = {}
    for kind in NOISES:
        c = case(val[0], kind)
        tuning[kind] = (c["noisy"], c["clean"], c["mask"])
    items = [{"image": str(folders["clean"] / f"{s}.nii.gz"), "subject": s} for s in train]
    return cases, tuning, items, test


def _real_cases(seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The real scan with seeded Gaussian (``seed``), Poisson (``seed + 1``) and Rician noise (``item_seed``)."""
    from transforms.noise import item_seed

    volume, mask, info = load_real_scan()
    seeds = {
        "gaussian": seed,
        "poisson": seed + 1,
        "rician": item_seed(seed, f"real_scan-rician{RICIAN_LEVEL:g}"),
    }
    cases = [
        {
            "noise": kind,
            "volume": "real_scan",
            "noisy": noisy_copy(volume, kind, seeds[kind], RICIAN_LEVEL if kind == "rician" else 15.0),
            "clean": volume,
            "mask": mask,
        }
        for kind in NOISES
    ]
    return cases, info


def _training_loader(items: list[dict[str, Any]], patch: int, batch: int, seed: int, samples: int = 1) -> Any:
    """Items in thirds (:data:`TRAINING_NOISE`), augmented, cached and shuffled (seeded).

    A third of the volumes get Gaussian noise (sigma 5-30 /255), a third Poisson (50-1000 photons) and a third Rician
    (sigma 5-30 /255 per channel). Each noisy volume gives ``samples`` patches, so a batch of ``batch`` patches holds
    ``batch // samples`` volumes.
    """
    if samples < 1 or batch % samples:
        raise ValueError(f"samples must be >= 1 and divide batch ({batch}), got {samples}")
    from monai.data import CacheDataset, ThreadDataLoader
    from torch.utils.data import ConcatDataset

    from transforms.presets import denoise_transforms

    datasets = [
        CacheDataset(
            items,
            denoise_transforms(
                stage="train",
                patch_size=patch,
                noise=noise,
                level=level,
                augment=True,
                seed=seed + i,
                num_samples=samples,
            ),
            cache_rate=1.0,
            num_workers=0,
            progress=False,
        )
        for i, (noise, level) in enumerate(TRAINING_NOISE)
    ]
    generator = torch.Generator().manual_seed(seed)
    return ThreadDataLoader(
        ConcatDataset(datasets), batch_size=batch // samples, shuffle=True, generator=generator, drop_last=True
    )


def _score(
    model: torch.nn.Module, cases: list[dict[str, Any]], patch: int, overlap: float, bf16: bool = False
) -> list[dict[str, Any]]:
    rows = []
    for case in cases:
        start, cpu_start = time.perf_counter(), time.process_time()
        out = denoise_with_network(model, case["noisy"], patch, overlap, bf16)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        psnr, ssim = masked_psnr(out, case["clean"], case["mask"]), masked_ssim(out, case["clean"], case["mask"])
        rows.append(
            {"noise": case["noise"], "volume": case["volume"], "psnr": round(psnr, 2), "ssim": round(ssim, 4)}
            | {"seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3)}
        )
    return rows


def train_with_checkpoints(
    name: str,
    size: str,
    items: list[dict[str, Any]],
    cases: list[dict[str, Any]],
    checkpoints_min: list[float],
    patch: int,
    batch: int,
    seed: int,
    clock: str = "cpu",
    resunet: dict[str, Any] | None = None,
    overlap: float = 0.25,
    bf16: bool = False,
    schedule: str = "cosine",
    lr: float = 1e-3,
    samples: int = 1,
) -> list[dict[str, Any]]:
    """Train one network for ``max(checkpoints_min)`` minutes, scoring every case at each checkpoint.

    The training is the pipeline's: :func:`pipeline.training.denoise.build_denoise_trainer` (MONAI's
    ``SupervisedTrainer``, L1 loss on float32 predictions, bf16 autocast or float32) with
    :class:`pipeline.training.handlers.NonFiniteLossGuard` and :class:`pipeline.training.handlers.TimeBudget`: its
    clock counts data loading and training steps, not the evaluations, and sets the learning rate.

    Args:
        name: network name (:data:`NETWORKS`).
        size: ``"default"`` or ``"small"`` (quick runs).
        items: training items ``{"image": clean path}``.
        cases: evaluation cases (``noise``, ``volume``, ``noisy``, ``clean``, ``mask``).
        checkpoints_min: training minutes at which to evaluate, ascending.
        patch: training patch / inference tile edge.
        batch: batch size.
        seed: seed of the weights, the data order and the augmentations.
        clock: ``"cpu"`` (this process's CPU time, all threads) or ``"wall"``.
        resunet: ResUnet3D arguments overriding the bundle's (``benchmarks._common.build_denoiser``).
        overlap: sliding-window overlap of the evaluations.
        bf16: train and evaluate under ``torch.autocast`` in bfloat16 (the loss and the weights stay float32).
        schedule: ``"cosine"`` anneals the learning rate to 0 over the whole budget (by the clock, not by steps),
            ``"constant"`` keeps it.
        lr: Adam's (peak) learning rate.
        samples: patches cut from each noisy volume (``batch`` must be a multiple).

    Returns:
        One row per (checkpoint, case) with ``network``, ``minutes``, ``steps``, ``psnr``, ``ssim``, ``seconds``.

    Raises:
        Diverged: when the training loss becomes non-finite.
    """
    if clock not in ("cpu", "wall"):
        raise ValueError(f"clock must be 'cpu' or 'wall', got {clock!r}")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    torch.manual_seed(seed)
    model = build_denoiser(name, size, **(resunet or {}) if name == "resunet3d" else {})
    loader = _training_loader(items, patch, batch, seed, samples)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    rows: list[dict[str, Any]] = []
    minutes_of = {m * 60: m for m in checkpoints_min}

    def checkpoint(engine: Engine, seconds: float) -> None:
        scored = _score(model, cases, patch, overlap, bf16)
        rows.extend(_checkpoint_rows(name, minutes_of[seconds], clock, budget.wall_s, engine, scored))

    budget = TimeBudget(
        max(checkpoints_min) * 60,
        clock=clock,
        checkpoints_s=list(minutes_of),
        on_checkpoint=checkpoint,
        lr_schedule=schedule,
    )
    trainer = build_denoise_trainer(
        model,
        loader,
        optimizer,
        torch.nn.L1Loss(),
        max_epochs=_MAX_EPOCHS,
        precision="bf16" if bf16 else "fp32",
        train_handlers=[NonFiniteLossGuard(), budget],
    )
    try:
        trainer.run()
    except NonFiniteLossError as error:
        raise Diverged(f"{name}: non-finite loss at step {trainer.state.iteration} (lr {lr:g})") from error
    return rows


def _checkpoint_rows(
    name: str, minutes: float, clock: str, wall_s: float, trainer: Engine, scored: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The rows of one checkpoint's scores (with the trainer's steps and last loss), and its printed line."""
    steps = trainer.state.iteration
    loss = round(float(torch.as_tensor(trainer.state.output["loss"]).detach()), 5)
    rows = [
        {
            "network": name,
            "minutes": minutes,
            "clock": clock,
            "wall_minutes": round(wall_s / 60, 2),
            "steps": steps,
            "loss": loss,
            **row,
        }
        for row in scored
    ]
    test = {kind: [r["psnr"] for r in scored if r["noise"] == kind and r["volume"] != "real_scan"] for kind in NOISES}
    means = " ".join(f"{kind} {np.mean(psnr):.2f}" for kind, psnr in test.items() if psnr)
    print(f"{name:13s} {minutes:6.2f} min {steps:5d} steps  mean test PSNR {means}", flush=True)
    return rows


def _attempts(precision: str, lr: float) -> list[tuple[str, float]]:
    """(precision, learning rate) to try in turn while a network's loss turns non-finite.

    bf16 first at ``lr`` and ``lr / 3``, then float32 at the same two (MONAI's UNet diverges in bf16 at every
    learning rate tried, 3e-3 to 3e-4, but not in float32); float32 runs try ``lr``, ``lr / 3`` and ``lr / 10``.
    """
    if precision == "bf16":
        return [("bf16", lr), ("bf16", lr / 3), ("fp32", lr), ("fp32", lr / 3)]
    return [("fp32", lr), ("fp32", lr / 3), ("fp32", lr / 10)]


def _default_checkpoints(minutes: float) -> list[float]:
    return [m for m in (1.0, 2.0, 5.0, 10.0, 20.0, 60.0) if m < minutes] + [minutes]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 5 subjects at 4 mm, small networks, 32^3, 1.2 CPU s each"
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget per network (see --clock)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="budget in process CPU or wall minutes")
    parser.add_argument("--checkpoints", type=float, nargs="+", help="minutes to score at (default 1,2,5,...)")
    parser.add_argument("--subjects", type=int, default=16, help="cohort size (60/20/20 train/val/test)")
    parser.add_argument(
        "--resunet-minutes",
        type=float,
        default=None,
        help="also train ResUnet3D alone for this budget (its curve to BM4D; the others stop at --minutes)",
    )
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--skip", nargs="*", default=[], help="classical methods to leave out, e.g. bm4d")
    parser.add_argument(
        "--resunet",
        type=json.loads,
        default=None,
        help="JSON of ResUnet3D arguments overriding the bundle's network_def (default: the demo's denoiser)",
    )
    parser.add_argument("--patch", type=int, default=32, help="training patch and evaluation tile edge")
    parser.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap of the evaluations")
    parser.add_argument("--batch", type=int, default=4, help="patches per training step")
    parser.add_argument("--samples", type=int, default=4, help="patches cut from each noisy volume")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam's peak learning rate (every network)")
    parser.add_argument("--schedule", choices=("cosine", "constant"), default="cosine", help="lr over the budget")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="training and inference precision of every network (auto: bf16 on a CPU with native bf16, else fp32)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(default_out("quality")))
    return parser


def _announce(args: argparse.Namespace, runs: list, checkpoints: list[float], spacing: float, note: str) -> None:
    """Say what the run measures and how long it should take."""
    budget = sum(max(marks) for _, marks in runs)
    if args.quick:
        # CPU seconds on the 2-core Xeon (AMX) / 1.5, x 1.2 for the Rician cases (98 s wall against 82 s without)
        expected = expected_duration(25, 30)
    else:  # the training budget dominates; the classical filters take minutes, BM4D tens of minutes
        threads = torch.get_num_threads() if args.clock == "cpu" else 1
        extra = 30 if bm4d_available() and "bm4d" not in args.skip else 8  # three noise kinds (20 / 5 for two)
        minutes = budget / threads + extra + len(runs) * 2
        expected = (
            f"about {minutes:.0f} min: {budget:g} training minutes ({args.clock} clock, {threads} thread(s)), the"
            " cohort, the classical filters and the evaluations"
        )
    announce(
        "benchmarks.quality",
        f"a {args.subjects}-subject cohort at {spacing:g} mm, classical filters"
        f"{' except ' + ', '.join(args.skip) if args.skip else ''}, then "
        + ", ".join(f"{name} for {max(marks):g} min" for name, marks in runs)
        + f" (scored at {', '.join(f'{m:g}' for m in checkpoints)} min)",
        expected,
        note,
    )


def _train_runs(
    args: argparse.Namespace, runs: list, items: list, cases: list, precision: str
) -> tuple[list[dict[str, Any]], list[str]]:
    """Train every network run, retrying a diverged one (:func:`_attempts`); its checkpoint rows and the failures."""
    size = "small" if args.quick else "default"
    networks, diverged = [], []
    for index, (name, marks) in enumerate(runs, 1):
        for attempt, lr in _attempts(precision, args.lr):
            print(
                f"[{index}/{len(runs)}] training {name} for {max(marks):g} {args.clock} min ({attempt}, lr {lr:g})",
                flush=True,
            )
            try:
                rows = train_with_checkpoints(
                    name,
                    size,
                    items,
                    cases,
                    marks,
                    patch=args.patch,
                    batch=args.batch,
                    seed=args.seed,
                    clock=args.clock,
                    resunet=args.resunet,
                    overlap=args.overlap,
                    bf16=attempt == "bf16",
                    schedule=args.schedule,
                    lr=lr,
                    samples=args.samples,
                )
                break
            except Diverged as error:
                print(f"{error}, {attempt}: trained again from the start", flush=True)
                diverged.append(f"{error}, {attempt}")
        else:
            continue
        networks += [{"run": f"{name} ({max(marks):g} min)", "lr": lr, "precision": attempt, **row} for row in rows]
    return networks, diverged


def _setup(args: argparse.Namespace, params: Any, checkpoints: list[float], precision: str, note: str) -> dict:
    """The run's settings, as the JSON records them (the test subjects and real scan are added by :func:`main`)."""
    return {
        "subjects": args.subjects,
        "spacing_mm": params.spacing,
        "noise": {
            "gaussian": f"sigma {params.gaussian_level:g}/255 of the robust maximum (the cohort's gaussian folder)",
            "poisson": f"{params.poisson_scale:g} photons at the robust maximum (poisson/)",
            "rician": f"sigma {RICIAN_LEVEL:g}/255 of the robust maximum per channel, seeded per subject",
        },
        "training_noise": {noise: list(level) for noise, level in TRAINING_NOISE},
        "minutes_per_network": args.minutes,
        "resunet3d_long_minutes": args.resunet_minutes,
        "clock": args.clock,
        "overlap": args.overlap,
        "resunet3d": {**bundle_resunet_config(), **args.resunet},
        "checkpoints_min": checkpoints,
        "patch": args.patch,
        "batch": args.batch,
        "samples_per_volume": args.samples,
        "lr": args.lr,
        "schedule": args.schedule,
        "precision": precision,
        "precision_note": note,
        "torch_threads": torch.get_num_threads(),
        "seed": args.seed,
        "bm4d_installed": bm4d_available(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables and target ratios, write the JSON.

    Args:
        argv: command-line arguments (default: ``sys.argv``).

    Returns:
        The result dict that was written.
    """
    from pipeline.data.cohort import CohortParameters, build_cohort

    args = _parser().parse_args(argv)
    if args.resunet is None:
        from pipeline.demo.run import DemoSettings

        args.resunet = dict(DemoSettings().denoiser)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.minutes, args.subjects, args.patch = 0.02, 5, 32
    checkpoints = sorted(args.checkpoints) if args.checkpoints else _default_checkpoints(args.minutes)
    params = CohortParameters(spacing=4.0) if args.quick else CohortParameters()
    precision, note = benchmark_precision(args.precision)
    runs = [(name, checkpoints) for name in args.networks]
    if args.resunet_minutes and "resunet3d" in args.networks:
        runs.append(("resunet3d", _default_checkpoints(args.resunet_minutes)))
    _announce(args, runs, checkpoints, params.spacing, note)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cohort = build_cohort(Path(tmp) / "cohort", n_subjects=args.subjects, seed=args.seed, params=params)
        print(
            f"cohort: {args.subjects} subjects, {tuple(cohort.shape)} at {params.spacing:g} mm "
            f"({time.perf_counter() - start:.1f} s)",
            flush=True,
        )
        cases, tuning, items, test_ids = _cohort_cases(cohort, args.seed)
        real_cases, real_info = _real_cases(args.seed)
        classical = evaluate_methods(cases + real_cases, tuning, quick=args.quick, skip=tuple(args.skip))
        networks, diverged = _train_runs(args, runs, items, cases + real_cases, precision)

    summary, curves = collect(classical, networks)
    print_tables(summary, curves, args.clock, test_ids, real_info)
    found = ratios(summary, args.minutes)
    for key, value in found.items():
        print(f"{key}: {value}")
    setup = _setup(args, params, checkpoints, precision, note)
    setup.update(test_subjects=test_ids, training_subjects=len(items), real_scan=real_info)
    result = {"benchmark": "quality", "quick": args.quick, "machine": machine_info(), "setup": setup}
    result.update(summary=summary, curves=curves, classical_rows=classical, network_rows=networks)
    result.update(ratios=found, diverged=diverged)
    write_json(result, args.out)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
