"""The study's command line: ``python -m pipeline.study [--quick | --budget {required,90min}] [--out study]``.

Runs part (a) (:mod:`pipeline.study.arms`), the longer-budget check of a few arms, and part (b)
(:mod:`pipeline.study.transfer`); each finished run is cached under ``<out>/runs``, so a killed study continues where
it stopped. Then writes ``<out>/results.json``, ``<out>/report.md`` and ``<out>/arms.png``
(:mod:`pipeline.study.report`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.study.arms import run_arm
from pipeline.study.cache import RunCache
from pipeline.study.data import (
    check_distinct_volumes,
    denoising_patches,
    generated_eval_items,
    labelled_sets,
    noisy_eval_items,
    simulated_cohort,
)
from pipeline.study.plan import (
    ARMS,
    BUDGET_90,
    FULL,
    LONGER_ARMS,
    QUICK,
    TINY,
    StudySettings,
    baseline_recipe,
    pretrain_kind,
)
from pipeline.study.report import write_report
from pipeline.study.transfer import (
    encoder_classifier,
    finetune,
    linear_probe,
    logistic_floor,
    pretrain_denoiser,
)
from pipeline.utils import tiny
from pipeline.utils.precision import resolve_precision

__all__ = ["cache_stamp", "main", "run_study"]

logger = logging.getLogger(__name__)

PARTS = ("arms", "longer", "transfer")
#: Version of the study's protocols, in the cache's stamp: runs cached under an older protocol (before 2: only the
#: pretrained encoder got batch-norm re-estimation and the lower encoder rate) are refused, never mixed.
PROTOCOL = 2
#: Wall minutes of each settings' whole study on a 2-core CPU with AVX512-BF16/AMX (bf16): measured 2026-11-27 for
#: BUDGET_90 (then the default), QUICK and TINY; FULL's is projected from BUDGET_90's per-run time (187 vs 86 runs).
_MINUTES = {BUDGET_90: 60.0, QUICK: 4.0, TINY: 1.5, FULL: 130.0}
#: ``--budget``: the settings each name selects.
BUDGETS = {"required": FULL, "90min": BUDGET_90}
#: Settings no single run depends on (how many seeds and budgets, the report's resamples): left out of the cache's
#: stamp, so a study re-run with more seeds or budgets keeps the runs it has. The margins stay in it: fixed before the
#: run, a cache refuses to be reported under others.
_COUNTS = ("seeds", "transfer_seeds", "pretrain_budgets", "bootstrap")


class _Progress:
    """Logs ``[k/N] what`` before each run and the elapsed time after it."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.perf_counter()

    def __call__(self, cache: RunCache, part: str, name: str, compute: Callable[[], Mapping[str, Any]]) -> dict:
        self.done += 1
        cached = cache.get(part, name) is not None
        if not cached:
            logger.info("[%d/%d] %s %s (%.0f min so far)", self.done, self.total, part, name, self._minutes())
        return cache.run(part, name, compute)

    def _minutes(self) -> float:
        return (time.perf_counter() - self.started) / 60.0


def _shard_seeds(seeds: int, shard: tuple[int, int]) -> range:
    """The seeds shard ``k`` of ``n`` runs: every n-th, from the (k-1)-th."""
    k, n = shard
    return range(k - 1, seeds, n)


def parse_shard(text: str) -> tuple[int, int]:
    """``"k/n"`` as ``(k, n)``; raises ``ValueError`` unless ``1 <= k <= n``."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected k/n, e.g. 1/2") from None
    if not 1 <= k <= n:
        raise ValueError(f"--shard {text!r}: k must be between 1 and n")
    return k, n


def _arm_data(out: Path, settings: StudySettings) -> dict[str, Any]:
    spacing, level = settings.spacing, settings.noise_level
    train = simulated_cohort(out / "data" / "denoise_train", settings.train_subjects, 11, "den-", spacing)
    held_out = simulated_cohort(out / "data" / "denoise_eval", settings.eval_subjects, 12, "eval-", spacing)
    check_distinct_volumes(
        {"denoiser training": [i["image"] for i in train], "held out": [i["image"] for i in held_out]}
    )
    return {
        "train": denoising_patches(train, settings.patch, settings.patches_per_step, level),
        "val": generated_eval_items(1, spacing, level, seed=7000),
        "eval": noisy_eval_items(held_out, level, seed=12)
        + generated_eval_items(settings.eval_generated, spacing, level, seed=5000),
    }


def _run_arms(
    out: Path,
    settings: StudySettings,
    recipe: Mapping,
    cache: RunCache,
    progress: _Progress,
    parts: Sequence[str],
    shard: tuple[int, int],
) -> None:
    data = _arm_data(out, settings)
    jobs = []
    if "arms" in parts:
        jobs += [("arms", arm, settings.steps) for arm in ARMS]
    if "longer" in parts and settings.longer_factor > 1:
        jobs += [("longer", arm, settings.steps * settings.longer_factor) for arm in ARMS if arm.name in LONGER_ARMS]
    for part, arm, steps in jobs:
        for seed in _shard_seeds(settings.seeds, shard):
            run_dir = out / "work" / part / arm.name.replace("/", "-") / f"seed{seed}"
            progress(
                cache,
                part,
                f"{arm.name}/seed{seed}",
                functools.partial(
                    run_arm, arm, seed, recipe, settings, data["train"], data["val"], data["eval"], run_dir, steps
                ),
            )


def _run_transfer(
    out: Path,
    settings: StudySettings,
    recipe: Mapping,
    cache: RunCache,
    progress: _Progress,
    pretrained: str | None,
    pretrained_depth: int,
    shard: tuple[int, int],
) -> None:
    spacing = settings.spacing
    n_labelled = settings.labelled_train + settings.labelled_test + 8
    labelled_items = simulated_cohort(out / "data" / "labelled", n_labelled, 21, "lab-", spacing, hard=True)
    unlabelled = simulated_cohort(out / "data" / "unlabelled", settings.unlabelled + 1, 22, "unl-", spacing, True)
    sets = labelled_sets(labelled_items, settings.labelled_train, settings.labelled_small, settings.labelled_test)
    paths = {i["subject"]: i["image"] for i in labelled_items}
    check_distinct_volumes(
        {
            "classifier test": [paths[i["subject"]] for i in sets["test"]],
            "classifier training": [paths[i["subject"]] for i in sets["large"]],
            "classifier validation": [paths[i["subject"]] for i in sets["val"]],
            "pretraining": [i["image"] for i in unlabelled],
        }
    )
    for size in ("small", "large"):
        progress(
            cache,
            "transfer",
            f"floor/{size}",
            functools.partial(
                logistic_floor,
                [paths[i["subject"]] for i in sets[size]],
                [i["label"] for i in sets[size]],
                [paths[i["subject"]] for i in sets["test"]],
                sets["test"],
            ),
        )
    pretrain_data = denoising_patches(unlabelled[:-1], 24, settings.patches_per_step, settings.noise_level)
    pretrain_val = noisy_eval_items(unlabelled[-1:], settings.noise_level, seed=22)
    denoisers = {pretrain_kind(b): b for b in settings.pretrain_budgets}
    kinds = ["random", *denoisers] + (["pretrained"] if pretrained else [])
    for seed in _shard_seeds(settings.transfer_seeds, shard):
        weights: dict[str, str | None] = {"random": None, "pretrained": pretrained}
        runs: dict[str, str | None] = {}
        for kind, budget in denoisers.items():
            folder = "pretrain" if kind == "denoiser" else f"pretrain_x{budget:g}"
            pre = progress(
                cache,
                "transfer",
                f"{folder}/seed{seed}",
                functools.partial(
                    pretrain_denoiser,
                    seed,
                    recipe,
                    settings,
                    pretrain_data,
                    pretrain_val,
                    out / "work" / folder / f"seed{seed}",
                    budget,
                ),
            )
            weights[kind], runs[kind] = pre["weights"], pre["run_dir"]
        for kind in kinds:
            for size in ("small", "large"):
                progress(
                    cache,
                    "transfer",
                    f"probe/{kind}/{size}/seed{seed}",
                    functools.partial(_probe, kind, seed, recipe, weights[kind], pretrained_depth, sets, size),
                )
                progress(
                    cache,
                    "transfer",
                    f"finetune/{kind}/{size}/seed{seed}",
                    functools.partial(
                        _finetune,
                        kind,
                        seed,
                        recipe,
                        weights[kind],
                        pretrained_depth,
                        settings,
                        sets,
                        size,
                        out / "work" / "finetune" / kind / size / f"seed{seed}",
                        runs.get(kind),
                    ),
                )


def _encoder(kind: str, seed: int, recipe: Mapping, weights: str | None, depth: int) -> Any:
    """The classifier of an encoder kind (every ``denoiser_x*`` budget loads a denoiser's weights)."""
    return encoder_classifier("denoiser" if kind.startswith("denoiser") else kind, seed, recipe, weights, depth)


def _probe(
    kind: str, seed: int, recipe: Mapping, weights: str | None, depth: int, sets: Mapping, size: str
) -> dict[str, Any]:
    return linear_probe(_encoder(kind, seed, recipe, weights, depth), sets[size], sets["test"])


def _finetune(
    kind: str,
    seed: int,
    recipe: Mapping,
    weights: str | None,
    depth: int,
    settings: StudySettings,
    sets: Mapping,
    size: str,
    run_dir: Path,
    denoiser_run: str | None,
) -> dict[str, Any]:
    network = _encoder(kind, seed, recipe, weights, depth)
    return finetune(network, seed, settings, sets, size, run_dir, denoiser_run=denoiser_run)


def _total_runs(settings: StudySettings, parts: Sequence[str], pretrained: bool, shard: tuple[int, int]) -> int:
    total, seeds = 0, len(_shard_seeds(settings.seeds, shard))
    if "arms" in parts:
        total += len(ARMS) * seeds
    if "longer" in parts and settings.longer_factor > 1:
        total += len(LONGER_ARMS) * seeds
    if "transfer" in parts:
        budgets = len(settings.pretrain_budgets)
        encoders = 1 + budgets + (1 if pretrained else 0)
        total += 2 + len(_shard_seeds(settings.transfer_seeds, shard)) * (budgets + encoders * 4)
    return total


def _announce(settings: StudySettings, precision: str) -> None:
    """Log how long the whole study took where it was measured, and what to expect here."""
    minutes = _MINUTES.get(settings)
    if minutes is None:
        logger.info("custom settings: no measured duration to compare with")
        return
    factor = "" if precision == "bf16" else " (here in fp32: expect about 1.5-2x that)"
    how = "is projected at" if settings == FULL else "took"
    logger.info(
        "the whole study %s %.0f min on a 2-core CPU with native bf16%s; finished runs are skipped",
        how,
        minutes,
        factor,
    )


def cache_stamp(settings: StudySettings, recipe: Mapping, precision: str, pretrained: str | None) -> dict[str, Any]:
    """What every cached run depends on: a cache made under another stamp is refused (:class:`RunCache`).

    Args:
        settings: the study's sizes; their counts of seeds and budgets and the bootstrap size are left out.
        recipe: the baseline recipe (:func:`~pipeline.study.plan.baseline_recipe`).
        precision: the training precision.
        pretrained: the third encoder's weights file, if any.
    """
    kept = {key: value for key, value in settings.as_dict().items() if key not in _COUNTS}
    return {**kept, "recipe": recipe, "precision": precision, "pretrained": pretrained, "protocol": PROTOCOL}


def run_study(
    out: str | Path,
    settings: StudySettings = FULL,
    parts: Sequence[str] = PARTS,
    pretrained: str | None = None,
    pretrained_depth: int = 18,
    command: str = "python -m pipeline.study",
    shard: tuple[int, int] = (1, 1),
) -> dict[str, Any]:
    """Run (or continue) the study in ``out`` and write its report.

    Args:
        out: the study folder.
        settings: :data:`~pipeline.study.plan.FULL` or :data:`~pipeline.study.plan.QUICK` (or your own).
        parts: any of ``"arms"``, ``"longer"``, ``"transfer"``.
        pretrained: a 3D-ResNets / MedicalNet weights file for a third encoder (skipped, with a note, when ``None``).
        pretrained_depth: its ResNet depth.
        command: the command recorded in the report.
        shard: ``(k, n)`` runs only the seeds ``k-1, k-1+n, ...`` of each arm and encoder and writes no report, so
            ``n`` processes (or machines sharing ``out``) split the study; a run without a shard then finds every
            run cached and writes the report.

    Returns:
        The results (also in ``<out>/results.json``); for a shard, only ``{"report": None}``.

    Raises:
        ValueError: for an unknown part, or a cache in ``out`` made with other settings.
    """
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown parts {unknown}: choose from {list(PARTS)}")
    out = Path(out)
    recipe = baseline_recipe(norm=settings.norm)
    precision = resolve_precision("auto", "cpu")
    cache = RunCache(out / "runs", cache_stamp(settings, recipe, precision, pretrained))
    progress = _Progress(_total_runs(settings, parts, pretrained is not None, shard))
    logger.info(
        "study in %s: %d runs (%s), %d seeds per arm, %d per transfer encoder, %d steps per arm, precision %s",
        out,
        progress.total,
        ", ".join(parts),
        settings.seeds,
        settings.transfer_seeds,
        settings.steps,
        precision,
    )
    _announce(settings, precision)
    started = time.perf_counter()
    if "arms" in parts or "longer" in parts:
        _run_arms(out, settings, recipe, cache, progress, parts, shard)
    if "transfer" in parts:
        _run_transfer(out, settings, recipe, cache, progress, pretrained, pretrained_depth, shard)
    if shard != (1, 1):
        logger.info("shard %d/%d done: once every shard is, run the study without --shard to write the report", *shard)
        return {"report": None}
    minutes = (time.perf_counter() - started) / 60.0
    return write_report(out, cache, settings, recipe, parts, pretrained, command, minutes)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``python -m pipeline.study``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.study",
        description="Answer the notes' questions and the transfer hypothesis with seeds and intervals.",
    )
    parser.add_argument("--out", default="study", help="study folder (runs are cached there; default: study)")
    parser.add_argument("--quick", action="store_true", help="every arm at toy sizes, in minutes (for the tests)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts to run")
    parser.add_argument(
        "--budget",
        choices=sorted(BUDGETS),
        default="required",
        help="required: the seeds a verdict needs (5 per arm, 10 per transfer encoder; about 130 min on 2 cores with "
        "native bf16, 3 h on 2 AVX2 cores in fp32); "
        "90min: 3 seeds each, every contrast underpowered (the report says so)",
    )
    parser.add_argument("--seeds", type=int, default=None, help="seeds per denoising arm (overrides --budget)")
    parser.add_argument(
        "--transfer-seeds", type=int, default=None, help="seeds per transfer encoder (overrides --budget)"
    )
    parser.add_argument(
        "--pretrain-budgets",
        type=float,
        nargs="+",
        default=None,
        help="pretraining budgets in multiples of the pretraining steps, e.g. 0.25 1 4 (default 1)",
    )
    parser.add_argument(
        "--shard",
        default="1/1",
        help="k/n: run every n-th seed from the k-th, so n processes sharing --out split the study (no report is "
        "written; run once more without --shard for it)",
    )
    parser.add_argument("--pretrained", default=None, help="3D-ResNets / MedicalNet weights: a third encoder")
    parser.add_argument("--pretrained-depth", type=int, default=18, help="ResNet depth of --pretrained")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("ignite.engine.engine").setLevel(logging.WARNING)  # each run's epochs: the study logs runs
    settings = QUICK if args.quick else BUDGETS[args.budget]
    if tiny.enabled():
        logger.info("%s is set: the study runs its TINY settings", tiny.ENV)
        settings = TINY
    changes = {"seeds": args.seeds, "transfer_seeds": args.transfer_seeds}
    if args.pretrain_budgets is not None:
        changes["pretrain_budgets"] = tuple(args.pretrain_budgets)
    command = shlex.join(["python", "-m", "pipeline.study", *(sys.argv[1:] if argv is None else argv)])
    try:
        settings = dataclasses.replace(settings, **{k: v for k, v in changes.items() if v is not None})
        shard = parse_shard(args.shard)
        results = run_study(args.out, settings, args.parts, args.pretrained, args.pretrained_depth, command, shard)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    if results["report"] is not None:
        logger.info("wrote %s", results["report"])
    return 0
