"""Which outputs should the inference guard combine? The network's candidates alone, or every output at once (SURE-LET)?

Run: ``python -m benchmarks.guard_family [--heads 8] [--seed 3000] [--levels 5 15 25] [--weights model.pt]
[--out ...json]``; ``--compare A.json B.json`` then says whether the model of run B beats that of run A through the
default guard (SURE-LET), paired by head: the 95 % t interval over heads of their mean difference (both cases, every
level) above 0.

Validation data only: generated whole heads (:func:`pipeline.data.synth.synth_volumes`, skull and scalp, contrasts
T1/T2/PD in turn, Gaussian and Rician noise in turn, 2 mm and 1.5 mm in turn) from seeds the ready model never saw
(its training draws fresh heads from its own stream, its epoch was chosen on seeds 1000-1001). Each noisy head, on
its robust-maximum scale, goes through the ready model and :class:`pipeline.inference.guard.SureGuard` twice on the
same network outputs: ``combine=False`` (the network, its blend with the input, single Gaussian filters and
non-negative network-plus-filter pairs), ``combine=True`` (also every output at once, weights of any sign) and
``combine=True`` with the network's output smoothed by Gaussian filters of 0.5 and 1 voxel among the outputs
(``network_widths``: for a network that under-smooths at high levels). PSNR in the head mask against the clean head,
and each guard's estimated gain against the true one.

Each head is scored twice: whole, with air around it (the guard measures the noise there), and cropped inside the
head (no air: the level is measured in the tissue, where fine anatomy passes for noise and reads high). SURE's
error grows with that of the level, and more so for a family that can smooth more, so each case gets its own rule,
fixed before the run: the guard combines for that case if the 95 % t interval of the per-head mean difference
(SURE-LET minus the candidates alone, averaged over the levels; heads are the independent units, ``n - 1`` degrees
of freedom) lies above 0, and adds the smoothed network's outputs by default if the same interval of their
difference (with them minus SURE-LET without them) lies above 0 in both cases. No real scan is read: real heads
stay for evaluation (``benchmarks.real_scans``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import announce, default_out, format_table, head_mask, machine_info, write_json

__all__ = ["compare", "generated_head", "generated_heads", "main", "score_head"]

_CONTRASTS = ("t1", "t2", "pd")

#: The guards compared: name -> :class:`pipeline.inference.guard.SureGuard` arguments.
GUARDS: dict[str, dict[str, Any]] = {
    "candidates": {"combine": False},
    "sure_let": {"combine": True},
    "smoothed": {"combine": True, "network_widths": (0.5, 1.0)},
}


def generated_heads(count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` head settings (seed, contrast, noise type, voxel size), cycling through each."""
    return [
        {
            "seed": seed + k,
            "contrast": _CONTRASTS[k % 3],
            "noise": ("gaussian", "rician")[k % 2],
            "voxel_mm": (2.0, 2.0, 1.5)[k % 3],
        }
        for k in range(count)
    ]


def _memoised(model: torch.nn.Module, roi: int, overlap: float) -> Callable[..., torch.Tensor]:
    """The network as the guard calls it, remembering its outputs so both guards see the same ones."""
    from benchmarks.quality import denoise_with_network

    seen: dict[str, torch.Tensor] = {}

    def predict(x: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy()[0], dtype=np.float32)
        inside = None if where is None else where.numpy()
        key = hashlib.sha1(array.tobytes() + (b"" if inside is None else inside.tobytes())).hexdigest()
        if key not in seen:
            out = denoise_with_network(model, array, roi, overlap, False, floor=None, where=inside)
            seen[key] = torch.from_numpy(out)[None]
        return seen[key]

    return predict


def _psnr(out: np.ndarray, clean: np.ndarray, mask: np.ndarray) -> float:
    peak = float(clean[mask].max())
    return 10.0 * math.log10(peak**2 / float(np.mean((out - clean)[mask] ** 2)))


def _inside(mask: np.ndarray, share: float = 0.5) -> tuple[slice, ...]:
    """The central ``share`` of the head's bounding box on every axis (half: inside an ellipsoid, corners too)."""
    box = []
    for axis in range(mask.ndim):
        found = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        low, high = int(found[0]), int(found[-1]) + 1
        cut = int(round((high - low) * (1 - share) / 2))
        box.append(slice(low + cut, high - cut))
    return tuple(box)


def generated_head(head: dict[str, Any], level: float, maps: Any, air: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One generated head (:func:`generated_heads`' settings) at one level: ``(noisy float32, clean float64)``.

    ``air=False`` crops both inside the head (:func:`_inside`), leaving no air around it.
    """
    from pipeline.data.synth import synth_volumes

    item = synth_volumes(
        maps,
        n=1,
        seed=head["seed"],
        voxel_size=head["voxel_mm"],
        noise=head["noise"],
        level=level,
        contrasts=[head["contrast"]],
        head_prob=1.0,
    )[0]
    noisy = item["image"][0].numpy().astype(np.float32)
    clean = item["label"][0].numpy().astype(np.float64)
    if not air:
        box = _inside(head_mask(clean))
        noisy, clean = np.ascontiguousarray(noisy[box]), clean[box]
    return noisy, clean


def score_head(
    model: torch.nn.Module, head: dict[str, Any], level: float, maps: Any, air: bool = True
) -> dict[str, Any]:
    """One generated head at one level: noisy, network, and each of :data:`GUARDS` (PSNR in the head).

    ``air=False`` crops the volume inside the head (:func:`_inside`), so the guard must measure the noise in the
    tissue, as on a skull-stripped, zero-filled or slab scan.
    """
    from pipeline.inference.guard import SureGuard
    from transforms.noise_level import robust_max

    noisy, clean = generated_head(head, level, maps, air)
    scale = robust_max(noisy)
    clean = clean / scale
    mask = head_mask(clean) if air else np.ones(clean.shape, bool)
    image = torch.from_numpy(noisy / scale)[None]
    predict = _memoised(model, 32, 0.25)
    row = {**head, "air": air, "level": level, "noisy": _psnr(noisy / scale, clean, mask)}
    row["network"] = _psnr(predict(image).numpy()[0], clean, mask)
    for name, settings in GUARDS.items():
        out, report = SureGuard(**settings)(image, predict)
        row[name] = _psnr(out.numpy()[0], clean, mask)
        row[f"{name}_choice"] = report.choice
        row[f"{name}_estimate_error"] = report.estimated_gain_db - (row[name] - row["noisy"])
        row["noise_method"] = report.noise_method
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}


def _decision(
    rows: list[dict[str, Any]], heads: list[dict[str, Any]], arm: str = "sure_let", base: str = "candidates"
) -> dict[str, Any]:
    """Whether ``arm`` beats ``base``: the 95 % t interval over heads of their per-head mean difference above 0."""
    from pipeline.evaluation.stats import seed_t_interval

    per_head = [np.mean([r[arm] - r[base] for r in rows if r["seed"] == h["seed"]]) for h in heads]
    mean, low, high = seed_t_interval(np.asarray(per_head))
    return {
        "rule": f"adopt if the 95 % t interval (heads, n - 1 df) of {arm} minus {base} is above 0",
        "difference_db": [round(mean, 3), round(low, 3), round(high, 3)],
        "heads": len(heads),
        "combine" if arm == "sure_let" else "adopt": bool(low > 0),
    }


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Whether run ``b``'s model beats run ``a``'s through the default guard, paired by head (:func:`_decision`).

    Raises:
        ValueError: the runs did not score the same heads, levels and cases.
    """
    key = ("seed", "air", "level")
    first = {tuple(r[k] for k in key): r for r in a["rows"]}
    second = {tuple(r[k] for k in key): r for r in b["rows"]}
    if first.keys() != second.keys():
        raise ValueError("the two guard_family runs scored different heads, levels or cases")
    rows = [{"seed": k[0], "a": first[k]["sure_let"], "b": second[k]["sure_let"]} for k in first]
    heads = [{"seed": seed} for seed in sorted({k[0] for k in first})]
    return {"models": [a.get("model"), b.get("model")], **_decision(rows, heads, "b", "a")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.guard_family", description=__doc__.split("\n")[0])
    parser.add_argument("--heads", type=int, default=8, help="generated heads (the independent units)")
    parser.add_argument("--seed", type=int, default=3000, help="seed of the first head")
    parser.add_argument("--levels", type=float, nargs="+", default=[5.0, 15.0, 25.0], help="sigma on 0-255")
    parser.add_argument("--weights", help="the denoiser to score (default: the ready denoiser the package ships)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two runs' JSON: does B's model beat A's?")
    parser.add_argument("--out", default=str(default_out("guard_family")))
    args = parser.parse_args(argv)
    if args.compare:
        found = compare(*(json.loads(Path(path).read_text()) for path in args.compare))
        print(f"{args.compare[1]} - {args.compare[0]}: {found}")
        return found

    from benchmarks.real_scans import load_denoiser
    from pipeline.data.synth import load_tissue_maps
    from pipeline.inference.ready import default_weights

    announce(
        "benchmarks.guard_family",
        f"three guards (candidates, SURE-LET, SURE-LET + smoothed network) on {args.heads} generated heads at "
        f"{args.levels}/255 (validation)",
        "about 30 s per head and level on 2 cores",
    )
    model, _ = load_denoiser(args.weights or default_weights())
    maps = load_tissue_maps(16.0, 1.0)
    heads = generated_heads(args.heads, args.seed)
    rows = [
        score_head(model, head, level, maps, air) for air in (True, False) for head in heads for level in args.levels
    ]
    columns = ["seed", "noise", "voxel_mm", "air", "noise_method", "level", "noisy", "network", *GUARDS]
    print(format_table(rows, [*columns, *(f"{name}_estimate_error" for name in GUARDS)]))
    cases = (("level measured in the air", True), ("level measured in the tissue", False))
    decision = {where: _decision([r for r in rows if r["air"] == air], heads) for where, air in cases}
    smoothing = {
        where: _decision([r for r in rows if r["air"] == air], heads, "smoothed", "sure_let") for where, air in cases
    }
    for where, found in decision.items():
        print(f"{where}: {'combine' if found['combine'] else 'do not combine'} ({found})")
    for where, found in smoothing.items():
        print(f"{where}: {'add' if found['adopt'] else 'do not add'} the smoothed network ({found})")
    result = {
        "benchmark": "guard_family",
        "command": "python -m benchmarks.guard_family " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "model": args.weights or "pipeline.inference.ready (the shipped denoiser)",
        "rows": rows,
        "decision": decision,
        "smoothing_decision": smoothing,
    }
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
