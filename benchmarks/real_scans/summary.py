"""Differences with scan-bootstrap intervals, the issue's targets met or missed, and the printed tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks._common import format_table
from benchmarks.real_scans.constants import COMPARED, METHODS, TARGETS
from benchmarks.real_scans.scans import RealScan

__all__ = ["differences", "print_tables", "scan_interval", "targets"]


def scan_interval(values: Sequence[float], seed: int = 0, n_resamples: int = 2000) -> dict[str, Any]:
    """Mean of per-scan values with its 95 % interval from a bootstrap that resamples scans (with replacement).

    Args:
        values: one value per scan (already averaged within the scan).
        seed: resampling seed.
        n_resamples: bootstrap resamples.

    Returns:
        ``{"mean", "low", "high", "n"}``; ``low``/``high`` are ``None`` for a single scan (no interval).
    """
    from pipeline.evaluation.stats import bootstrap

    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    if data.size == 1:
        return {"mean": round(float(data[0]), 3), "low": None, "high": None, "n": 1}
    mean, low, high = bootstrap(lambda _, items: float(data[items].mean()), 1, data.size, 0.95, n_resamples, seed)
    return {"mean": round(mean, 3), "low": round(low, 3), "high": round(high, 3), "n": int(data.size)}


def _interval_text(cell: dict[str, Any]) -> str:
    if cell["mean"] is None:
        return "-"
    if cell["n"] == 1:
        return f"{cell['mean']:+.2f} (n=1)"
    return f"{cell['mean']:+.2f} [{cell['low']:+.2f}, {cell['high']:+.2f}] n={cell['n']}"


def differences(rows: Sequence[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """``default - method`` (PSNR in the head mask, dB) per (noise, level), each scan a resampling unit.

    Args:
        rows: the scored rows.
        seed: resampling seed.

    Returns:
        One dict per (noise, level): ``noise``, ``level``, ``scans`` and, per method of :data:`COMPARED` that ran,
        ``{"mean", "low", "high", "n", "per_scan"}``.
    """
    by = {(r["scan"], r["noise"], r["level"], r["method"]): r["psnr_head"] for r in rows}
    out = []
    for noise, level in dict.fromkeys((r["noise"], r["level"]) for r in rows):
        scans = [s for s in dict.fromkeys(r["scan"] for r in rows) if (s, noise, level, "default") in by]
        if not scans:
            continue
        entry: dict[str, Any] = {"noise": noise, "level": level, "scans": scans}
        for other in COMPARED:
            per_scan = {
                s: round(by[s, noise, level, "default"] - by[s, noise, level, other], 3)
                for s in scans
                if (s, noise, level, other) in by
            }
            if per_scan:
                entry[other] = scan_interval(list(per_scan.values()), seed) | {"per_scan": per_scan}
        out.append(entry)
    return out


def _verdict(name: str, value: float | None, target: float, detail: str, higher: bool = True) -> dict[str, Any]:
    if value is None:
        return {"target": name, "value": None, "met": None, "text": f"{name}: not measured ({detail})"}
    met = value >= target if higher else value <= target
    margin = value - target if higher else target - value
    text = f"{name}: {value:+.2f} vs target {'>=' if higher else '<='} {target:g}: {'met' if met else 'MISSED'}"
    text += f" by {abs(margin):.2f}" + (f" ({detail})" if detail else "")
    return {"target": name, "value": round(value, 3), "met": bool(met), "margin": round(margin, 3), "text": text}


def targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets (:data:`TARGETS`) as measured, met or missed and by how much.

    "Every level": the mean over scans and noises at each level, the worst level counts. Speed: mean seconds per
    volume of BM4D over the default's, on the cases where both ran.

    Args:
        rows: the scored rows.

    Returns:
        One verdict per target.
    """
    by = {(r["scan"], r["noise"], r["level"], r["method"]): r for r in rows}
    cases = [k[:3] for k in by if k[3] == "default"]

    def diffs(other: str, min_level: float = 0.0) -> dict[float, list[float]]:
        out: dict[float, list[float]] = {}
        for case in cases:
            if case[2] >= min_level and (*case, other) in by:
                out.setdefault(case[2], []).append(
                    by[(*case, "default")]["psnr_head"] - by[(*case, other)]["psnr_head"]
                )
        return out

    def worst_level(per_level: dict[float, list[float]]) -> tuple[float | None, str]:
        if not per_level:
            return None, "no case"
        means = {level: float(np.mean(v)) for level, v in per_level.items()}
        level = min(means, key=means.get)
        worst_case = min(v for values in per_level.values() for v in values)
        return means[level], f"worst level {level:g}/255; worst single case {worst_case:+.2f}"

    names = list(TARGETS)
    out = []
    for name, other, min_level in (
        (names[0], "noisy", 0.0),
        (names[1], "gaussian_oracle", 0.0),
        (names[2], "nl_means_blind", 10.0),
    ):
        value, detail = worst_level(diffs(other, min_level))
        out.append(_verdict(name, value, TARGETS[name], detail))
    bm4d = [v for values in diffs("bm4d").values() for v in values]
    out.append(
        _verdict(
            names[3],
            float(np.mean(bm4d)) if bm4d else None,
            TARGETS[names[3]],
            f"{len(bm4d)} cases" if bm4d else "BM4D not run",
        )
    )
    errors = {
        noise: [
            r["guard"]["estimated_gain_db"]
            - (r["psnr_head"] - by[(r["scan"], r["noise"], r["level"], "noisy")]["psnr_head"])
            for r in rows
            if r["method"] == "default" and r["noise"] == noise and "estimated_gain_db" in r.get("guard", {})
        ]
        for noise in ("gaussian", "rician")
    }
    gauss = errors["gaussian"]
    rician = errors["rician"]
    rician_text = (
        f"Rician: worst {max(np.abs(rician)):.2f} dB, mean {np.mean(rician):+.2f}" if rician else "no Rician case"
    )
    out.append(
        _verdict(
            names[4],
            float(np.max(np.abs(gauss))) if gauss else None,
            TARGETS[names[4]],
            f"{len(gauss)} Gaussian cases, mean {np.mean(gauss):+.2f}; {rician_text}" if gauss else "no guard report",
            higher=False,
        )
    )
    both = [c for c in cases if (*c, "bm4d") in by]
    if both:
        bm4d_s = float(np.mean([by[(*c, "bm4d")]["seconds"] for c in both]))
        default_s = float(np.mean([by[(*c, "default")]["seconds"] for c in both]))
        out.append(
            _verdict(
                names[5],
                bm4d_s / default_s,
                TARGETS[names[5]],
                f"BM4D {bm4d_s:.2f} s, default {default_s:.2f} s per volume, {len(both)} cases; median of the "
                f"per-case ratios {_median_ratio(by, both):.1f}, less moved by a busy machine's slow calls",
            )
        )
    else:
        out.append(_verdict(names[5], None, TARGETS[names[5]], "BM4D not run"))
    adapted = [
        r["psnr_head"] - by[(r["scan"], r["noise"], r["level"], "bm4d")]["psnr_head"]
        for r in rows
        if r["method"].startswith("default+") and (r["scan"], r["noise"], r["level"], "bm4d") in by
    ]
    detail = f"{len(adapted)} adapted cases, the adapted network through the guard" if adapted else "no --adapt run"
    out.append(_verdict(names[6], float(np.mean(adapted)) if adapted else None, TARGETS[names[6]], detail))
    return out


def print_tables(
    rows: list[dict[str, Any]], scans: list[RealScan], diffs: list[dict[str, Any]], skipped: list[dict[str, Any]]
) -> None:
    """Print the tables.

    Per scan: PSNR in the head mask of every method (columns noise and level); then the differences with intervals,
    SURE's gain against the true gain, the blind noise estimate against the added level, and the speed.
    """
    for scan in scans:
        mine = [r for r in rows if r["scan"] == scan.name]
        reference = "a second acquisition (noise-corrected PSNR; raw second-acquisition PSNR in brackets)"
        print(
            f"\n{scan.name}: {scan.description}, {scan.volume.shape} at {scan.spacing_mm} mm, reference "
            f"{reference if scan.second_acquisition else 'the scan itself'}; own noise {scan.noise_sigma_255:.2f}/255 "
            f"({scan.noise_estimates['method']}), head mask {scan.mask.mean():.0%}"
        )
        for skip in (s for s in skipped if s["scan"] == scan.name):
            print(f"  {skip['level']:g}/255: {skip['reason']}")
        if not mine:
            continue
        columns = list(dict.fromkeys(f"{r['noise']} {r['level']:g}" for r in mine))
        table = []
        for method in (m for m in METHODS if any(r["method"] == m for r in mine)):
            own = [r for r in mine if r["method"] == method]
            cells = {
                f"{r['noise']} {r['level']:g}": f"{r['psnr_head']:.2f}"
                + (f" ({r['psnr_head_second']:.2f})" if "psnr_head_second" in r else "")
                for r in own
            }
            table.append({"method": METHODS[method], **cells, "s/volume": float(np.mean([r["seconds"] for r in own]))})
        print("\nPSNR in the head mask (dB)\n")
        print(format_table(table, ["method", *columns, "s/volume"]))
    if diffs:
        print("\nPSNR differences, default minus method, head mask (dB): mean over scans [95 % bootstrap over scans]\n")
        cells = [
            {
                "noise": d["noise"],
                "level": f"{d['level']:g}",
                "n scans": len(d["scans"]),
                **{METHODS[o]: _interval_text(d[o]) for o in COMPARED if o in d},
            }
            for d in diffs
        ]
        print(format_table(cells, ["noise", "level", "n scans", *(METHODS[o] for o in COMPARED if o in diffs[0])]))
    guarded = [r for r in rows if r["method"] == "default" and r.get("guard")]
    if guarded:
        by = {(r["scan"], r["noise"], r["level"], r["method"]): r for r in rows}
        table = []
        for r in guarded:
            noisy = by[r["scan"], r["noise"], r["level"], "noisy"]
            true_gain = r["psnr_head"] - noisy["psnr_head"]
            guard = r["guard"]
            table.append(
                {
                    "scan": r["scan"],
                    "noise": r["noise"],
                    "level": f"{r['level']:g}",
                    "choice": guard.get("choice"),
                    "SURE gain": guard.get("estimated_gain_db"),
                    "true gain": round(true_gain, 2),
                    "SURE - true": round(guard.get("estimated_gain_db", float("nan")) - true_gain, 2),
                    "sigma / added": _level_ratio(guard.get("sigma_input_255"), r["level"]),
                    "Haar sigma / added": _level_ratio(
                        noisy["blind_sigma_255"] * noisy.get("robust_max", float("nan")), r["level"]
                    ),
                    "s default": r["seconds"],
                    "s BM4D": by.get((r["scan"], r["noise"], r["level"], "bm4d"), {}).get("seconds"),
                }
            )
        print(
            "\nThe guard per case: SURE's estimated gain over the noisy input vs the true gain (dB), its blind noise "
            "estimate over the added level (both on the reference's scale, not the noisy scan's robust maximum, which "
            "the noise inflates), seconds per volume\n"
        )
        print(format_table(table, list(table[0])))


def _level_ratio(sigma_255: float | None, level: float) -> float | None:
    """A noise estimate over the added level, both on the reference's 0-255 scale (``None`` when not recorded)."""
    if sigma_255 is None or not np.isfinite(sigma_255):
        return None
    return round(float(sigma_255) / level, 3)


def _median_ratio(by: dict[tuple, dict[str, Any]], cases: Sequence[tuple]) -> float:
    """The median over cases of BM4D's seconds over the default's."""
    return float(np.median([by[(*c, "bm4d")]["seconds"] / max(by[(*c, "default")]["seconds"], 1e-9) for c in cases]))
