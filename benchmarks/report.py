"""Summarise the latest benchmark JSON files as Markdown (what the README's Performance section quotes).

Run: ``python -m benchmarks.report [--results benchmarks/results]``; prints one section per JSON file found, with
its date, machine and the target ratios. Nothing is measured here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks._common import format_table

__all__ = ["main", "summarise"]

_COLUMNS = {
    "classical": ["method", "noise", "param", "psnr", "ssim", "seconds"],
    "throughput": ["network", "variant", "params_m", "gflop_per_step", "seconds", "samples_per_s", "gflops"],
    "inference": ["config", "seconds_per_scan", "speedup_vs_baseline", "peak_rss_gib"],
    "loading": ["loader", "augment", "samples_per_s", "cache_build_s", "ratio_to_step_rate"],
}


def summarise(data: dict[str, Any], name: str) -> str:
    """One Markdown section for one benchmark result.

    Args:
        data: the JSON a benchmark wrote.
        name: the file's stem (used as the heading).

    Returns:
        The section text.
    """
    machine = data.get("machine", {})
    lines = [
        f"### {name}",
        f"{machine.get('date_utc', '?')} UTC, {machine.get('cpu', '?')}, {machine.get('logical_cpus', '?')} logical "
        f"CPUs, torch {machine.get('torch', '?')} ({machine.get('torch_threads', '?')} threads)"
        + (" - PARTIAL run" if data.get("partial") else ""),
        "",
    ]
    kind = data.get("benchmark", name)
    if kind == "quality":
        cols = ["method", "g15_psnr", "g15_ssim", "g15_s", "poi_psnr", "poi_ssim", "ric_psnr", "ric_ssim"]
        cols += ["real_g15_psnr", "real_poi_psnr", "real_ric_psnr"]
        lines += [format_table(data["summary"], cols), ""]
        curve = ["run", "minutes", "wall_minutes", "steps", "g15_psnr", "poi_psnr", "ric_psnr", "real_g15_psnr"]
        lines += [format_table(data["curves"], curve), ""]
    elif kind in _COLUMNS and "rows" in data:
        columns = [c for c in _COLUMNS[kind] if any(c in r for r in data["rows"])]
        if kind == "throughput":
            columns.append("fraction_of_ceiling")
            ceiling = data.get("ceiling_gflops", {})
            lines += [f"conv3d ceiling GFLOP/s: {', '.join(f'{k} {v:.1f}' for k, v in ceiling.items())}", ""]
        lines += [format_table(data["rows"], columns), ""]
    lines += [f"- {key}: {value}" for key, value in data.get("ratios", {}).items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    """Print the Markdown summary of every ``*.json`` in the results folder.

    Args:
        argv: command-line arguments (default: ``sys.argv``).

    Returns:
        The printed text.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    sections = []
    for path in sorted(Path(args.results).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            sections.append(f"### {path.stem}\nunreadable: {error}\n")
            continue
        sections.append(summarise(data, path.stem))
    text = "\n".join(sections) if sections else f"no results in {args.results}\n"
    print(text)
    return text


if __name__ == "__main__":
    main()
