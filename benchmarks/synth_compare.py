"""The demo's training recipe vs. the synthetic-head generator's, at an equal CPU budget, over several seeds.

Run (one process per recipe and seed; two can share a 2-core machine, the budget is CPU time)::

    python -m benchmarks.synth_compare run --recipe demo --seed 0 --cpu-seconds 150 --out results/demo_0.json
    python -m benchmarks.synth_compare run --recipe synth --seed 0 --cpu-seconds 150 --out results/synth_0.json
    python -m benchmarks.synth_compare summary results/*.json

Both recipes train the demo's small ResUnet3D (``pipeline.demo.run.DemoSettings.denoiser``) from the same seeded
initial weights on the pipeline's MONAI ``SupervisedTrainer`` (:func:`pipeline.training.denoise.build_denoise_trainer`
with :class:`pipeline.training.handlers.TimeBudget` and ``NonFiniteLossGuard``): Adam (peak lr 3e-3, cosine of the
clock over the budget), L1 loss, batches of 4 patches of 32^3, bf16 autocast, one torch thread, until this process
has spent ``--cpu-seconds`` of CPU time on data *and* steps (one-time preparation, i.e. building the cohort, caching
its volumes or reading the template maps, is not counted):

* ``demo``: the demo's data: paired ``gaussian15/`` -> ``clean/`` volumes of a small demo cohort (skull-stripped
  MNI152 warps at 2 mm, one fixed noise sample per subject), patches inside the brain
  (``transforms.presets.denoise_transforms(paired=True)``), 2 volumes x 2 patches per batch.
* ``synth``: ``transforms.synth.synth_transforms`` on the MNI152 tissue maps with its default ranges (fresh random
  head, contrast, resolution, field of view and noise type/level for every patch).

Evaluation (after training, not counted), PSNR (data range 1 on the clean scan's robust maximum) inside the mask and
over the whole volume:

* ``gen_t1``: 2 held-out generated T1 heads with skull and scalp, 2 mm, Gaussian sigma 15/255 (seeds 5000-5001);
* ``cohort``: 2 test subjects of the demo cohort, ``gaussian15/`` (the demo recipe's own domain);
* ``real``: the real T1 head that ships with nibabel (``benchmarks._common.load_real_scan``; evaluation only, never
  used to train or choose anything), sigma 15/255 Gaussian noise added (seeded), head mask.

Networks denoise as the bundle does (input divided by its own robust maximum, sliding 32^3 windows, overlap 0.25).
``summary`` prints each recipe's mean and 95 % t-interval over seeds and the paired (same seed) difference.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from benchmarks._common import build_denoiser, load_real_scan, machine_info, noisy_copy, write_json
from pipeline.evaluation.metrics import masked_psnr
from pipeline.training.denoise import build_denoise_trainer
from pipeline.training.handlers import NonFiniteLossGuard, TimeBudget

__all__ = ["RECIPES", "main", "summarise", "train_recipe"]

RECIPES = ("demo", "synth")
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _robust_max(volume: np.ndarray) -> float:
    values = volume[volume > 0]
    return float(np.percentile(values, 99.5)) if values.size else 1.0


def _cohort(root: Path, subjects: int = 8) -> Any:
    from pipeline.data.cohort import CohortParameters, build_cohort

    marker = root / "cohort.json"
    if marker.is_file():
        from types import SimpleNamespace

        folders = {name: root / name for name in ("clean", "masks", "gaussian15", "poisson")}
        return SimpleNamespace(subjects_csv=root / "subjects.csv", folders=folders)
    return build_cohort(root, n_subjects=subjects, seed=0, params=CohortParameters(spacing=2.0))


def _split(cohort: Any) -> dict[str, list[str]]:
    import csv

    with open(cohort.subjects_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {part: sorted(r["subject_id"] for r in rows if r["split"] == part) for part in ("train", "val", "test")}


def _demo_loader(cohort: Any, seed: int) -> Any:
    from monai.data import CacheDataset, DataLoader

    from transforms.presets import denoise_transforms

    folders = cohort.folders
    items = [
        {"image": str(folders["gaussian15"] / f"{s}.nii.gz"), "label": str(folders["clean"] / f"{s}.nii.gz")}
        for s in _split(cohort)["train"]
    ]
    chain = denoise_transforms(stage="train", patch_size=32, paired=True, num_samples=2, seed=seed)
    dataset = CacheDataset(items, chain, cache_rate=1.0, num_workers=0, progress=False)
    return DataLoader(dataset, batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(seed))


def _synth_loader(seed: int) -> Any:
    from monai.data import DataLoader, Dataset

    from pipeline.data.synth import load_tissue_maps, synth_items
    from transforms.synth import synth_transforms

    items = synth_items(load_tissue_maps(), 64)
    return DataLoader(Dataset(items, synth_transforms(patch_size=32, seed=seed)), batch_size=4, shuffle=False)


def train_recipe(recipe: str, seed: int, cpu_seconds: float, cohort: Any, lr: float = 3e-3) -> tuple[Any, dict]:
    """Train the demo's small ResUnet3D with one recipe for ``cpu_seconds`` of this process's CPU time.

    Args:
        recipe: ``"demo"`` or ``"synth"``.
        seed: seeds the initial weights, the data order and the random transforms.
        cpu_seconds: the budget (data and steps).
        cohort: the demo cohort (training data of ``demo``).
        lr: Adam's peak learning rate.

    Returns:
        ``(network, log)`` with steps, CPU and wall seconds, and the mean L1 of the last 50 steps and of the
        identity on the same batches.
    """
    from pipeline.demo.run import DemoSettings

    torch.manual_seed(seed)
    network = build_denoiser("resunet3d", **dict(DemoSettings().denoiser))
    loader = _demo_loader(cohort, seed) if recipe == "demo" else _synth_loader(seed)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    budget = TimeBudget(cpu_seconds, clock="cpu", lr_schedule="cosine")
    trainer = build_denoise_trainer(
        network,
        loader,
        optimizer,
        torch.nn.L1Loss(),
        max_epochs=10**9,  # the budget ends training
        precision="bf16",
        train_handlers=[NonFiniteLossGuard(), budget],
    )
    losses, identity = [], []

    @trainer.on(Events.ITERATION_COMPLETED)
    def record(engine: Engine) -> None:
        output = engine.state.output
        losses.append(float(output["loss"].detach()))
        identity.append(float(torch.nn.functional.l1_loss(output["image"].float(), output["label"].float())))

    start_cpu, start_wall = time.process_time(), time.perf_counter()
    trainer.run()
    steps = trainer.state.iteration
    log = {
        "steps": steps,
        "cpu_s": round(time.process_time() - start_cpu, 1),
        "wall_s": round(time.perf_counter() - start_wall, 1),
        "last50_l1": float(np.mean(losses[-50:])),
        "last50_identity_l1": float(np.mean(identity[-50:])),
    }
    return network, log


def _cases(cohort: Any, seed: int) -> list[dict[str, Any]]:
    import nibabel as nib

    from pipeline.data.synth import load_tissue_maps, synth_volumes

    cases = []
    for volume in synth_volumes(load_tissue_maps(), n=2, seed=5000, voxel_size=2.0, contrasts=["t1"], head_prob=1.0):
        clean = volume["label"][0].numpy()
        ref = _robust_max(clean)
        cases.append(
            {
                "set": "gen_t1",
                "volume": volume["subject"],
                "noisy": volume["image"][0].numpy() / ref,
                "clean": clean / ref,
                "mask": volume["mask"][0].numpy() > 0.5,
            }
        )
    folders = cohort.folders
    for subject in _split(cohort)["test"][:2]:
        clean = np.asarray(nib.load(folders["clean"] / f"{subject}.nii.gz").get_fdata(), dtype=np.float32)
        ref = _robust_max(clean)
        noisy = np.asarray(nib.load(folders["gaussian15"] / f"{subject}.nii.gz").get_fdata(), dtype=np.float32)
        mask = np.asarray(nib.load(folders["masks"] / f"{subject}.nii.gz").get_fdata()) > 0.5
        cases.append({"set": "cohort", "volume": subject, "noisy": noisy / ref, "clean": clean / ref, "mask": mask})
    real, head, _ = load_real_scan()
    cases.append(
        {"set": "real", "volume": "anatomical", "noisy": noisy_copy(real, "gaussian", 100 + seed), "clean": real}
    )
    cases[-1]["mask"] = head
    return cases


def _score(network: Any, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from benchmarks.quality import denoise_with_network

    rows = []
    for case in cases:
        out = denoise_with_network(network, case["noisy"], 32, overlap=0.25, bf16=True)
        psnr = masked_psnr(out, case["clean"], case["mask"])
        whole = masked_psnr(out, case["clean"])
        noisy = masked_psnr(case["noisy"], case["clean"], case["mask"])
        rows.append({"set": case["set"], "volume": case["volume"], "psnr": psnr, "psnr_volume": whole, "noisy": noisy})
    return rows


def _interval(values: list[float]) -> tuple[float, float]:
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, math.nan
    return mean, _T975.get(len(values) - 1, 1.96) * float(np.std(values, ddof=1)) / math.sqrt(len(values))


def summarise(paths: list[str]) -> dict[str, Any]:
    """Means and 95 % t-intervals per recipe and set, and the paired (same seed) ``synth - demo`` differences.

    Args:
        paths: JSON files written by ``run``.

    Returns:
        ``{"rows": [...], "differences": [...]}`` (also printed).
    """
    runs = [json.loads(Path(p).read_text()) for p in paths]
    table: dict[tuple[str, str, str], dict[int, float]] = {}
    for run in runs:
        for metric in ("psnr", "psnr_volume"):
            for name in sorted({r["set"] for r in run["scores"]}):
                value = float(np.mean([r[metric] for r in run["scores"] if r["set"] == name]))
                table.setdefault((run["recipe"], name, metric), {})[run["seed"]] = value
    rows = []
    for (recipe, name, metric), by_seed in sorted(table.items()):
        mean, half = _interval(list(by_seed.values()))
        rows.append(
            {"recipe": recipe, "set": name, "metric": metric, "seeds": len(by_seed), "mean": mean, "ci95": half}
        )
        print(f"{recipe:6s} {name:7s} {metric:12s} {mean:6.2f} +- {half:.2f} dB  ({len(by_seed)} seeds)")
    differences = []
    for (recipe, name, metric), by_seed in sorted(table.items()):
        if recipe != "synth" or ("demo", name, metric) not in table:
            continue
        demo = table[("demo", name, metric)]
        paired = [by_seed[s] - demo[s] for s in sorted(set(by_seed) & set(demo))]
        mean, half = _interval(paired)
        differences.append({"set": name, "metric": metric, "seeds": len(paired), "mean": mean, "ci95": half})
        print(f"synth - demo  {name:7s} {metric:12s} {mean:+6.2f} +- {half:.2f} dB  ({len(paired)} paired seeds)")
    return {"rows": rows, "differences": differences}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: ``run`` one recipe and seed, or ``summary`` of the JSON files (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--recipe", choices=RECIPES, required=True)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--cpu-seconds", type=float, default=150.0)
    run.add_argument("--cohort", default="/tmp/resunet3d_synth_compare_cohort")
    run.add_argument("--out", required=True)
    summary = sub.add_parser("summary")
    summary.add_argument("paths", nargs="+")
    summary.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.command == "summary":
        result = summarise(sorted(p for pattern in args.paths for p in glob.glob(pattern)))
        if args.out:
            write_json(result, args.out)
        return result
    torch.set_num_threads(1)
    cohort = _cohort(Path(args.cohort))
    network, log = train_recipe(args.recipe, args.seed, args.cpu_seconds, cohort)
    print(f"{args.recipe} seed {args.seed}: {log}", flush=True)
    scores = _score(network, _cases(cohort, args.seed))
    for row in scores:
        print(f"  {row['set']:7s} {row['volume']:12s} PSNR {row['psnr']:.2f}", end="")
        print(f" (volume {row['psnr_volume']:.2f}, noisy {row['noisy']:.2f})")
    result = {"recipe": args.recipe, "seed": args.seed, "budget_cpu_s": args.cpu_seconds, "training": log}
    result.update(scores=scores, machine=machine_info())
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
