"""Which recipe should the demo's denoiser train with? Its own (one noise level) or the ready model's (every level).

Run: ``python -m benchmarks.demo_recipe --run DEMO_RUN [--levels 5 10 15 25] [--noises gaussian rician]
[--out benchmarks/results/demo_recipe.json]``.

``DEMO_RUN`` is a finished demo run (``python -m pipeline.demo --out DEMO_RUN``). Its **validation** subjects
(``splits/denoiser.json``: the denoiser never trained on them, and no figure the demo reports is scored on them) get
new noise at each level (:func:`benchmarks._common.noisy_copy`, seeded per subject, noise and level), and four outputs
are scored against the clean volumes, PSNR in the brain mask: the demo's denoiser (Gaussian 15/255 only, on the
cohort) and the ready model (``pipeline.inference.ready``: every level 1-30/255, Gaussian and Rician, generated heads
only), each raw and through the guard (:func:`benchmarks.real_scans.guarded_output`), as ``denoise`` writes them.

The rule, fixed before the run: the demo switches to the ready model's recipe if its guarded output scores higher at
the demo's own task, Gaussian 15/255, on these validation volumes; the other levels say what each recipe is for.
Two validation subjects choose a recipe; they carry no claim (no interval is printed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import announce, default_out, format_table, machine_info, noisy_copy, write_json

__all__ = ["main", "validation_volumes"]

_METHODS = ("noisy", "demo", "demo_guarded", "ready", "ready_guarded")


def validation_volumes(run: Path) -> list[dict[str, Any]]:
    """The demo run's validation subjects: ``{"scan", "clean", "mask"}``, clean scaled to its robust maximum.

    Raises:
        FileNotFoundError: the folder is not a finished demo run.
    """
    from benchmarks.adaptation import load_site_volumes

    return load_site_volumes(run, split="val")


def _score_case(models: dict[str, Any], case: dict[str, Any], noisy: np.ndarray) -> dict[str, float]:
    from benchmarks.quality import denoise_with_network
    from benchmarks.real_scans import guarded_output
    from pipeline.evaluation.metrics import volume_quality

    outputs = {"noisy": noisy}
    for name, (model, roi) in models.items():
        outputs[name] = denoise_with_network(model, noisy, roi, 0.25, False)
        outputs[f"{name}_guarded"] = guarded_output(model, noisy, roi, 0.25)[0]
    return {m: volume_quality(outputs[m], case["clean"], case["mask"])["psnr_brain"] for m in _METHODS}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo_recipe", description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished demo run folder")
    parser.add_argument("--levels", type=float, nargs="+", default=[5.0, 10.0, 15.0, 25.0], help="sigma on 0-255")
    parser.add_argument("--noises", nargs="+", default=["gaussian", "rician"], choices=("gaussian", "rician"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(default_out("demo_recipe")))
    args = parser.parse_args(argv)

    from benchmarks.real_scans import load_denoiser
    from pipeline.inference.ready import default_weights
    from transforms.noise import item_seed

    announce(
        "benchmarks.demo_recipe",
        f"the demo's denoiser vs the ready model, raw and guarded, on {args.run}'s validation volumes",
        "about 1 min per volume, noise and level on 2 cores",
    )
    models = {}
    for name, weights in (("demo", args.run / "models" / "denoiser" / "model.pt"), ("ready", default_weights())):
        model, card = load_denoiser(weights)
        models[name] = (model, int(np.ravel(card.get("patch_size", [32]))[0]))
    rows = []
    for case in validation_volumes(args.run):
        for noise in args.noises:
            for level in args.levels:
                seed = item_seed(args.seed, f"{case['scan']}-{noise}-{level:g}")
                noisy = noisy_copy(case["clean"], noise, seed, level)
                psnr = _score_case(models, case, noisy)
                rows.append({"scan": case["scan"], "noise": noise, "level": level} | psnr)
    means = [
        {"noise": noise, "level": level}
        | {
            m: round(float(np.mean([r[m] for r in rows if (r["noise"], r["level"]) == (noise, level)])), 2)
            for m in _METHODS
        }
        for noise in args.noises
        for level in args.levels
    ]
    print(format_table(means, ["noise", "level", *_METHODS]))
    task = next((m for m in means if (m["noise"], m["level"]) == ("gaussian", 15.0)), None)
    decision = None
    if task is not None:
        switch = task["ready_guarded"] > task["demo_guarded"]
        decision = {
            "rule": "switch if ready_guarded > demo_guarded at Gaussian 15/255 on the validation volumes",
            "ready_guarded_minus_demo_guarded": round(task["ready_guarded"] - task["demo_guarded"], 2),
            "switch": bool(switch),
        }
        print(f"decision: {'switch to' if switch else 'keep the demo recipe, not'} the ready recipe ({decision})")
    result = {
        "benchmark": "demo_recipe",
        "command": "python -m benchmarks.demo_recipe " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "run": str(args.run),
        "subjects": sorted({r["scan"] for r in rows}),
        "rows": rows,
        "means": means,
        "decision": decision,
    }
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
