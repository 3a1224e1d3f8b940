"""How close does the tissue noise estimate come to the truth on heads with no air? Generated heads only.

Run: ``python -m benchmarks.tissue_noise [--heads 6] [--seed 5003] [--levels 5 10 15 25] [--out ...json]``.

Each generated head (:func:`benchmarks.guard_family.generated_heads`: contrasts T1/T2/PD, Gaussian and Rician noise,
2 and 1.5 mm in turn) is cropped inside the head, so no air is left and :func:`transforms.noise_level.estimate_noise`
must measure the level in the tissue. The table gives, per head and level, the estimate over the true level (the
standard deviation of noisy minus clean; for Rician noise, where the head is bright) for the weakly-textured-patch
estimate (:func:`transforms.noise_level.estimate_tissue_sigma`, the guard's) and Haar's MAD
(:func:`transforms.noise_level.estimate_noise_sigma`). The patch edge (5, not 3) was chosen on seeds 5000-5002; the
default seeds chose nothing. No real scan is read.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from benchmarks._common import announce, default_out, format_table, machine_info, write_json

__all__ = ["main", "score"]


def score(head: dict[str, Any], level: float, maps: Any) -> dict[str, Any]:
    """One generated head at one level, cropped inside the head: both estimates over the true level."""
    from benchmarks.guard_family import generated_head
    from transforms.noise_level import estimate_noise, estimate_noise_sigma

    noisy, clean = generated_head(head, level, maps, air=False)
    error = noisy - clean
    true = float(np.std(error if head["noise"] == "gaussian" else error[clean > 0.3 * clean.max()]))
    start = time.perf_counter()
    found = estimate_noise(noisy, "tissue")
    seconds = time.perf_counter() - start
    return {
        **head,
        "level": level,
        "shape": "x".join(map(str, noisy.shape)),
        "tissue_ratio": round(found["noise_sigma"] / true, 3),
        "haar_ratio": round(estimate_noise_sigma(noisy) / true, 3),
        "seconds": round(seconds, 2),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line (module docstring)."""
    from benchmarks.guard_family import generated_heads
    from pipeline.data.synth import load_tissue_maps

    parser = argparse.ArgumentParser(prog="python -m benchmarks.tissue_noise", description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--seed", type=int, default=5003)
    parser.add_argument("--levels", type=float, nargs="+", default=[5.0, 10.0, 15.0, 25.0])
    parser.add_argument("--out", default=str(default_out("tissue_noise")))
    args = parser.parse_args(argv)
    announce("benchmarks.tissue_noise", "tissue noise estimates, generated heads cropped inside", "about 1 min")
    maps = load_tissue_maps(16.0, 1.0)
    rows = [score(h, level, maps) for h in generated_heads(args.heads, args.seed) for level in args.levels]
    columns = ["seed", "contrast", "noise", "voxel_mm", "level", "shape", "tissue_ratio", "haar_ratio", "seconds"]
    print(format_table(rows, columns))
    summary = {
        name: {"min": min(r[name] for r in rows), "max": max(r[name] for r in rows)}
        for name in ("tissue_ratio", "haar_ratio")
    }
    print(f"estimate / truth: tissue patches {summary['tissue_ratio']}, Haar MAD {summary['haar_ratio']}")
    result = {
        "benchmark": "tissue_noise",
        "command": "python -m benchmarks.tissue_noise " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "rows": rows,
        "summary": summary,
    }
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
