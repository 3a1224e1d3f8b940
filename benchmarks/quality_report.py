"""The tables of ``benchmarks.quality``: per-method means, the curves over the training budget, the target ratios.

Nothing here measures anything: the functions turn the rows ``benchmarks.quality`` scored (one per method, noise,
volume and, for the networks, checkpoint) into the summary and curve tables it prints and writes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks._common import format_table

__all__ = ["CURVE_COLUMNS", "NOISES", "SUMMARY_COLUMNS", "collect", "print_tables", "ratios", "summarise_method"]

#: The scored noise kinds and their short names in the tables and JSON fields (``g15_psnr``, ``real_ric_psnr``, ...).
NOISES = {"gaussian": "g15", "poisson": "poi", "rician": "ric"}
SUMMARY_COLUMNS = ["method", "g15_psnr", "g15_ssim", "g15_s", "g15_cpu_s", "poi_psnr", "poi_ssim", "ric_psnr"]
SUMMARY_COLUMNS += ["ric_ssim", "real_g15_psnr", "real_poi_psnr", "real_ric_psnr"]
CURVE_COLUMNS = ["run", "minutes", "wall_minutes", "steps", "lr", "precision", "g15_psnr", "poi_psnr", "ric_psnr"]
CURVE_COLUMNS += ["real_g15_psnr", "real_poi_psnr", "real_ric_psnr"]


def summarise_method(rows: list[dict[str, Any]], label: str) -> dict[str, Any]:
    """Mean PSNR/SSIM/seconds of one method over the test volumes, per noise, plus its real-scan PSNR/SSIM."""
    out: dict[str, Any] = {"method": label}
    for kind, short in NOISES.items():
        test = [r for r in rows if r["noise"] == kind and r["volume"] != "real_scan"]
        real = [r for r in rows if r["noise"] == kind and r["volume"] == "real_scan"]
        if test:
            out[f"{short}_psnr"] = round(float(np.mean([r["psnr"] for r in test])), 2)
            out[f"{short}_ssim"] = round(float(np.mean([r["ssim"] for r in test])), 4)
            out[f"{short}_s"] = round(float(np.mean([r["seconds"] for r in test])), 3)
            out[f"{short}_cpu_s"] = round(float(np.mean([r["cpu_seconds"] for r in test])), 3)
        if real:
            out[f"real_{short}_psnr"] = real[0]["psnr"]
            out[f"real_{short}_ssim"] = real[0]["ssim"]
    return out


def collect(classical: list[dict[str, Any]], networks: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """The summary (every classical method, then each network run at its last checkpoint) and the curves.

    Returns:
        ``(summary rows, curve rows)``: a curve row per network run and checkpoint.
    """
    methods = dict.fromkeys(r["method"] for r in classical)
    summary = [summarise_method([r for r in classical if r["method"] == m], m) for m in methods]
    curves = []
    for run in dict.fromkeys(r["run"] for r in networks):
        rows = [r for r in networks if r["run"] == run]
        marks = list(dict.fromkeys(r["minutes"] for r in rows))
        summary.append(summarise_method([r for r in rows if r["minutes"] == max(marks)], run))
        for minutes in marks:
            cell = summarise_method([r for r in rows if r["minutes"] == minutes], run)
            first = next(r for r in rows if r["minutes"] == minutes)
            keys = ("minutes", "wall_minutes", "steps", "lr", "precision")
            curves.append(
                {"run": run, **{k: first[k] for k in keys}, **{k: v for k, v in cell.items() if k != "method"}}
            )
    return summary, curves


def print_tables(summary: list[dict], curves: list[dict], clock: str, test_ids: Any, real_info: Any) -> None:
    """Print the summary and curve tables (what the benchmark shows on the console)."""
    print(f"\nheld-out cohort subjects {test_ids} (mean), real scan {real_info}\n")
    print(format_table(summary, SUMMARY_COLUMNS))
    print(f"\nPSNR vs. training minutes ({clock} clock; held-out cohort mean; real scan)\n")
    print(format_table(curves, CURVE_COLUMNS))


def ratios(summary: list[dict[str, Any]], minutes: float) -> dict[str, Any]:
    """The issue's targets, each as a measured difference or ratio (met or not is printed beside it).

    ResUnet3D's longest run is compared with the classical methods; its run at ``minutes`` (the budget every
    network had) with the MONAI networks.
    """
    by = {row["method"]: row for row in summary}
    same = f"resunet3d ({minutes:g} min)"
    resunet = [m for m in by if m.startswith("resunet3d (")]
    longest = max(resunet, key=lambda m: float(m.split("(")[1].split()[0]), default=None)
    out: dict[str, Any] = {}

    def diff(a: str | None, b: str, key: str, target: float, label: str) -> None:
        if a in by and b in by and key in by[a] and key in by[b]:
            value = round(by[a][key] - by[b][key], 2)
            out[f"{label} (target >= {target:+g} dB)"] = f"{value:+.2f} dB, {'met' if value >= target else 'missed'}"

    diff(longest, "bm4d", "g15_psnr", 1.0, f"{longest} - BM4D, Gaussian 15")
    diff(longest, "bm4d", "poi_psnr", 0.0, f"{longest} - BM4D, Poisson")
    diff(longest, "bm4d", "ric_psnr", 0.0, f"{longest} - BM4D, Rician 15")
    diff(longest, "nl_means", "real_g15_psnr", 1.0, f"{longest} - NL means, real scan, Gaussian 15")
    for other in ("unet", "basicunet", "flexibleunet"):
        name = f"{other} ({minutes:g} min)"
        diff(same, name, "g15_psnr", 0.0, f"{same} - {name}, Gaussian 15")
        diff(same, name, "poi_psnr", 0.0, f"{same} - {name}, Poisson")
        diff(same, name, "ric_psnr", 0.0, f"{same} - {name}, Rician 15")
    if longest and "g15_s" in by[longest]:
        for other, target in (("bm4d", 20.0), ("nl_means", 1.0)):
            if other in by and "g15_s" in by[other]:
                value = by[other]["g15_s"] / max(by[longest]["g15_s"], 1e-9)
                cpu = by[other]["g15_cpu_s"] / max(by[longest]["g15_cpu_s"], 1e-9)
                out[f"{other} seconds / ResUnet3D seconds per volume (target >= {target:g}x)"] = (
                    f"{value:.1f}x wall ({cpu:.1f}x CPU time), {'met' if value >= target else 'missed'}"
                )
    return out
