"""The tables of the documentation: how each recorded result (``docs/results/NAME.json``) becomes Markdown.

A renderer takes the JSON and the folder of recorded results and returns Markdown; :data:`RENDERERS` picks it by the
JSON's kind (:func:`kind_of`: its ``benchmark`` field, or the shape of the demo's and the study's ``results.json``).
A result measured elsewhere and typed in from a page carries ``"source"`` (where its figures were transcribed from)
and ``"transcribed": true``, and its provenance line says so. Nothing here measures anything.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import format_table

__all__ = [
    "HEADLINES",
    "RENDERERS",
    "ResultsBlockError",
    "kind_of",
    "load_result",
    "metric_cells",
    "provenance",
    "render_summary",
    "render_table",
    "summarise",
]

_COLUMNS = {
    "classical": ["method", "noise", "param", "psnr", "ssim", "seconds"],
    "throughput": ["network", "variant", "params_m", "gflop_per_step", "seconds", "samples_per_s", "gflops"],
    "inference": ["config", "seconds_per_scan", "speedup_vs_baseline", "peak_rss_gib"],
    "loading": ["loader", "augment", "samples_per_s", "cache_build_s", "ratio_to_step_rate"],
    "whole_head": ["tiles", "precision", "seconds", "peak_rss_mib", "output_ok"],
}


class ResultsBlockError(ValueError):
    """A results block names a JSON file that does not exist or cannot be read, or a kind it cannot render."""


def load_result(name: str, results: str | Path) -> dict[str, Any]:
    """The recorded result ``results/NAME.json``.

    Raises:
        ResultsBlockError: if it is missing or not JSON.
    """
    path = Path(results) / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsBlockError(f"results block {name!r}: no {path} (record it with --record)") from None
    except json.JSONDecodeError as error:
        raise ResultsBlockError(f"results block {name!r}: {path} is not JSON: {error}") from None


def kind_of(data: Mapping[str, Any], name: str = "") -> str:
    """The result's kind: its ``benchmark`` field, ``demo``/``study`` for their ``results.json``, else ``name``."""
    if "benchmark" in data:
        return str(data["benchmark"])
    if "denoising" in data and "classification" in data:
        return "demo"
    if "arms" in data and "transfer" in data:
        return "study"
    return name


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


def _number(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.{digits}f}"
    return str(value)


def _mean(values: Iterable[Any]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(numbers) / len(numbers) if numbers else None


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _classical(data: dict[str, Any]) -> str:
    """Methods as rows; PSNR and SSIM in the brain mask and wall seconds per noise as columns."""
    rows = data.get("rows", [])
    noises = list(dict.fromkeys(r["noise"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["method"], r["noise"]): r for r in rows}
    headers = ["method"]
    for noise in noises:
        headers += [f"{noise} PSNR (dB)", f"{noise} SSIM", f"{noise} s/volume"]
    body = []
    for method in methods:
        cells = [method]
        for noise in noises:
            r = by.get((method, noise), {})
            seconds = None if method == "noisy" else r.get("seconds")
            cells += [_number(r.get("psnr"), 2), _number(r.get("ssim"), 3), _number(seconds, 2)]
        body.append(cells)
    return _table(headers, body)


def _real_scans(data: dict[str, Any]) -> str:
    """Methods as rows; the mean PSNR in the head mask over the scans and noises, per added noise level."""
    rows = data.get("rows", [])
    levels = sorted({float(r["level"]) for r in rows if "level" in r})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    headers = ["method", *[f"{level:g}/255, head (dB)" for level in levels], "all levels, head / whole volume (dB)"]
    body = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        cells = [method]
        for level in levels:
            cells.append(_number(_mean(r.get("psnr_head") for r in mine if float(r["level"]) == level), 2))
        head, whole = _mean(r.get("psnr_head") for r in mine), _mean(r.get("psnr_whole") for r in mine)
        cells.append(f"{_number(head, 2)} / {_number(whole, 2)}")
        body.append(cells)
    text = _table(headers, body) if body else ""
    lines = [f"- {k}: {v}" for k, v in data.get("ratios", {}).items()]
    lines += [f"- {target['text']}" for target in data.get("targets", [])]
    return text + ("\n\n" if text and lines else "") + "\n".join(lines)


def _generic(data: dict[str, Any]) -> str:
    """The summary's tables and ratios, without its heading and machine line."""
    return summarise(data, "").split("\n", 3)[3].strip()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _signed(value: float, digits: int) -> str:
    """``+0.54``; one more digit where rounding would show a non-zero value as 0."""
    if value and round(value, digits) == 0:
        digits += 1
    return f"{value:+.{digits}f}"


def _with_interval(value: Any, interval: Any, digits: int, signed: bool = False) -> str:
    """``v [lo, hi]``: an estimate with its interval (``interval`` a pair, or ``None`` for the estimate alone)."""
    fmt = (lambda v: _signed(v, digits)) if signed else (lambda v: _number(v, digits))
    if not _is_number(value):
        return _number(value, digits)
    if isinstance(interval, Sequence) and len(interval) == 2 and all(_is_number(v) for v in interval):
        return f"{fmt(value)} [{fmt(interval[0])}, {fmt(interval[1])}]"
    return fmt(value)


def metric_cells(scores: Mapping[str, Any], digits: int = 2) -> dict[str, str]:
    """Every numeric figure of a score dict, each with its interval where the dict holds one.

    An interval is ``NAME_interval: [lo, hi]`` beside ``NAME``, or the value itself as ``[estimate, lo, hi]``; the
    count ``n`` is shown as it is; nested dicts and lists of other shapes are skipped.
    """
    cells = {}
    for key, value in scores.items():
        if key.endswith("_interval"):
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            cells[key] = str(value)
        elif _is_number(value):
            cells[key] = _with_interval(value, scores.get(f"{key}_interval"), digits)
        elif isinstance(value, Sequence) and len(value) == 3 and all(_is_number(v) for v in value):
            cells[key] = _with_interval(value[0], value[1:], digits)
    return cells


def _rows_table(rows: Mapping[str, Mapping[str, str]], first: str) -> str:
    """A table from ``{row name: {column: cell}}``, the columns in order of first appearance."""
    columns = list(dict.fromkeys(c for cells in rows.values() for c in cells))
    body = [[name, *(cells.get(c, "-") for c in columns)] for name, cells in rows.items()]
    return _table([first, *(c.replace("_", " ") for c in columns)], body)


_DEMO_NAMES = {
    "denoiser": "ResNet from the denoiser's encoder",
    "scratch": "ResNet from scratch",
    "logistic_floor": "logistic-regression floor",
}
_QUALITY = (("psnr_brain", "PSNR brain (dB)", 2), ("psnr_volume", "PSNR volume (dB)", 2))
_QUALITY += (("ssim_brain", "SSIM brain", 3), ("ssim_volume", "SSIM volume", 3), ("seconds", "s/volume", 2))


def demo_classification(data: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """The demo's classification rows: each classifier, then the logistic-regression floor, every figure generic."""
    rows = {_DEMO_NAMES.get(k, k): metric_cells(v) for k, v in data.get("classification", {}).items()}
    for key, value in data.items():
        if key.startswith("logistic_floor") and "logistic_floor" not in data.get("classification", {}):
            metric = key.removeprefix("logistic_floor").strip("_") or "balanced_accuracy"
            cells = metric_cells(value) if isinstance(value, Mapping) else metric_cells({metric: value})
            rows.setdefault("logistic-regression floor", {}).update(cells)
    return rows


def _demo_run(data: Mapping[str, Any]) -> str:
    """``16.4 minutes wall (...), stages: ...``, or nothing when the run's duration is not recorded."""
    if not _is_number(data.get("total_wall_s")):
        return ""
    cpu = data.get("total_cpu_s")
    stages = "; ".join(f"{s['name']} {s['wall_s'] / 60:.1f} min" for s in data.get("stages", []))
    return (
        f"**{data['total_wall_s'] / 60:.1f} minutes** wall"
        + (f" ({cpu / 60:.1f} CPU minutes)" if _is_number(cpu) else "")
        + (f"; stages: {stages}" if stages else "")
        + "."
    )


def _demo(data: dict[str, Any]) -> str:
    """The run's duration and stages, the denoising table (means over the held-out volumes), the classification."""
    lines = [_demo_run(data)]
    den = data.get("denoising", {})
    if den:
        shown = [q for q in _QUALITY if any(q[0] in m.get("mean", {}) for m in den.values())]
        body = []
        for method, entry in den.items():
            mean = {**entry.get("mean", {}), **({"seconds": None} if method == "noisy" else {})}
            digits = {k: data.get("digits", d) if k.startswith("psnr") else d for k, _, d in shown}
            body.append([method, *(_number(mean.get(k), digits[k]) for k, _, _ in shown)])
        n = len(next(iter(den.values())).get("per_volume", [])) or data.get("test_volumes")
        table = _table(["method", *(q[1] for q in shown)], body)
        lines += ["", f"Denoising, mean of the {n} held-out volumes:" if n else "Denoising:", "", table]
    rows = demo_classification(data)
    if rows:
        lines += ["", "Classification of the held-out subjects:", "", _rows_table(rows, "classifier")]
    return "\n".join(lines).strip()


def _demo_seeds(data: dict[str, Any]) -> str:
    """Methods as rows, ``brain / volume`` PSNR per seed as columns, then each difference, per group of seeds.

    The groups: confirmation seeds (test volumes), then selection seeds (validation volumes); a transcribed result
    has one group at its top level.
    """
    groups = [
        (title, data[key])
        for key, title in (
            ("confirmation", "**Confirmation seeds** (chose nothing), test volumes:"),
            ("selection", "**Selection seeds** (chose the recipe), validation volumes:"),
        )
        if data.get(key)
    ]
    if not groups:
        return _seeds_group(data)
    return "\n\n".join(f"{title}\n\n{_seeds_group(group)}" for title, group in groups)


def _seeds_group(data: Mapping[str, Any]) -> str:
    per_seed = data.get("per_seed", [])
    methods = list(dict.fromkeys(k.rsplit(" ", 1)[0] for row in per_seed for k in row if k != "seed"))
    body = [
        [m, *(f"{_number(r.get(f'{m} brain'), 2)} / {_number(r.get(f'{m} volume'), 2)}" for r in per_seed)]
        for m in methods
    ]
    text = _table(["PSNR (dB), brain / volume", *(f"seed {r['seed']}" for r in per_seed)], body)
    lines = [f"- {d['contrast']}, {d['region']}: {_seeds_cell(d)}" for d in data.get("differences", [])]
    return text + ("\n\n" + "\n".join(lines) if lines else "")


def _seeds_cell(d: Mapping[str, Any]) -> str:
    """A ``demo_seeds`` difference as :func:`_diff_cell` writes a contrast, in dB, ``(underpowered)`` where marked."""
    t = [d["t_low"], d["t_high"]] if _is_number(d.get("t_low")) and _is_number(d.get("t_high")) else None
    cell = _diff_cell({"estimate": d["mean dB"], "bootstrap_interval": [d["low"], d["high"]], "t_interval": t})
    return f"{cell} dB" + (" (underpowered)" if d.get("underpowered") else "")


def _diff_cell(diff: Mapping[str, Any] | None, digits: int = 2) -> str:
    """``+0.54 [+0.06, +0.92]`` from a contrast's bootstrap interval, ``t [..]`` beside it when there is one."""
    if not diff:
        return "-"
    cell = _with_interval(diff.get("estimate"), diff.get("bootstrap_interval"), digits, True)
    if diff.get("t_interval"):
        low, high = diff["t_interval"]
        cell += f", t [{_signed(low, digits)}, {_signed(high, digits)}]"
    return cell


def _verdict(diff: Mapping[str, Any] | None) -> str:
    if not diff:
        return "-"
    return str(diff.get("verdict", "-")) + (" (underpowered)" if diff.get("underpowered") else "")


def _arms_table(rows: Sequence[Mapping[str, Any]]) -> str:
    body = [
        [
            str(r.get("question", "")),
            str(r["arm"]),
            _number(r.get("psnr_brain"), 2),
            _diff_cell(r.get("diff_psnr_brain")),
            _number((r.get("diff_psnr_brain") or {}).get("tost_p"), 3),
            _verdict(r.get("diff_psnr_brain")),
            _number(r.get("cpu_seconds"), 0),
        ]
        for r in rows
    ]
    headers = ["question", "arm", "PSNR brain (dB)", "Δ from the baseline (dB)", "TOST p", "verdict", "CPU s per run"]
    return _table(headers, body) + _rule([r.get("diff_psnr_brain") for r in rows], "dB")


def _rule(diffs: Sequence[Mapping[str, Any] | None], unit: str) -> str:
    """The line under a table of contrasts: their seeds, interval level and equivalence margin.

    Empty for contrasts recorded before the rules (no margin: the percentile bootstrap alone, no TOST).
    """
    found = [d for d in diffs if d and "level" in d and "margin" in d]
    if not found:
        return ""
    first = found[0]
    seeds = sorted({int(d["seeds"]) for d in found if "seeds" in d})
    return (
        f"\n\n{'/'.join(map(str, seeds)) or '?'} seeds; {100 * first['level']:.2f} % intervals, Bonferroni-adjusted "
        "(bootstrap over seeds and subjects or volumes; t over the per-seed means, n - 1 degrees of freedom); "
        f"equivalence margin ±{first['margin']:g} {unit}, fixed before the run; TOST at "
        f"the same level. Rule: *better*/*worse* when both intervals exclude 0, *equivalent* when TOST rejects a "
        "difference as large as the margin and the bootstrap interval lies inside it, else *inconclusive*."
    )


def _study(data: dict[str, Any]) -> str:
    """The arms (a), the longer budget, and the transfer part (b): figures with their intervals and verdicts."""
    parts = []
    if data.get("arms"):
        parts += ["**(a) One change at a time**, PSNR in the brain:", "", _arms_table(data["arms"])]
    if data.get("longer"):
        parts += ["", "**At the longer budget:**", "", _arms_table(data["longer"])]
    transfer = data.get("transfer") or {}
    if transfer.get("rows"):
        rows = {
            f"{r['encoder']}, {r['evaluation']}, {r['size']}": metric_cells(
                {k: v for k, v in r.items() if k in ("auc", "balanced_accuracy", "seeds")}
            )
            for r in transfer["rows"]
        }
        parts += ["", "**(b) Transfer**, on the test subjects:", "", _rows_table(rows, "encoder, evaluation, set")]
    if transfer.get("contrasts"):
        body = [
            [
                c["encoder"],
                c["evaluation"],
                c["size"],
                _diff_cell(c.get("diff_auc")),
                _number((c.get("diff_auc") or {}).get("tost_p"), 3),
                _verdict({**(c.get("diff_auc") or {}), "verdict": c.get("answer", "-")}),
            ]
            for c in transfer["contrasts"]
        ]
        headers = ["encoder", "evaluation", "set", "Δ AUC, pretrained - random", "TOST p", "answer"]
        parts += ["", _table(headers, body) + _rule([c.get("diff_auc") for c in transfer["contrasts"]], "AUC")]
    return "\n".join(parts).strip()


def _transcribed(data: dict[str, Any]) -> str:
    """Each table as it was typed on its page (``tables``: title, columns, rows of cells)."""
    parts = []
    for table in data.get("tables", []):
        if table.get("title"):
            parts += [f"**{table['title']}**", ""]
        parts += [_table(table["columns"], [[str(c) for c in row] for row in table["rows"]]), ""]
    return "\n".join(parts).strip()


def render_table(data: dict[str, Any], kind: str) -> str:
    """The table of a result of this kind (:data:`RENDERERS`, else the summary's tables)."""
    return RENDERERS.get(kind, _generic)(data).strip()


#: How each kind of result becomes a table (:func:`kind_of`); any other kind gets :func:`_generic`.
def _demo_recipe(data: dict[str, Any]) -> str:
    """Mean PSNR in the brain per noise and level of each output, then the rule fixed before the run and its verdict."""
    methods = ("noisy", "demo", "demo_guarded", "ready", "ready_guarded")
    body = [[m["noise"], f"{m['level']:g}", *(_number(m[k], 2) for k in methods)] for m in data.get("means", [])]
    lines = [_table(["noise", "level (/255)", *methods], body)]
    decision = data.get("decision")
    if decision:
        verdict = "switch to the ready recipe" if decision["switch"] else "keep the demo's recipe"
        lines += [
            "",
            f"Rule: {decision['rule']}; ready - demo {decision['ready_guarded_minus_demo_guarded']:+.2f} dB: "
            f"{verdict}.",
        ]
    return "\n".join(lines)


def _guard_family(data: dict[str, Any]) -> str:
    """Mean PSNR in the head per case (air or not) and level, each guard's worst estimate error, then the rules."""
    rows = data.get("rows", [])
    guards = [g for g in ("candidates", "sure_let", "smoothed") if rows and g in rows[0]]
    titles = {"candidates": "candidates", "sure_let": "SURE-LET", "smoothed": "SURE-LET + smoothed network"}
    body = []
    for air in (True, False):
        for level in sorted({r["level"] for r in rows}):
            cell = [r for r in rows if r["air"] == air and r["level"] == level]
            if not cell:
                continue
            means = [_number(_mean(r[k] for r in cell), 2) for k in ("noisy", "network", *guards)]
            errors = [
                " / ".join(
                    _number(
                        max((abs(r[k]) for r in cell if r["noise"] == noise and math.isfinite(r[k])), default=None), 2
                    )
                    for k in (f"{g}_estimate_error" for g in guards)
                )
                for noise in ("gaussian", "rician")
            ]
            body.append(["whole" if air else "inside the head", f"{level:g}", str(len(cell)), *means, *errors])
    names = " / ".join(titles[g] for g in guards)
    headers = ["volume", "level (/255)", "heads", "noisy", "network", *(titles[g] for g in guards)]
    errors = [f"worst SURE error, Gaussian ({names})", "worst SURE error, Rician"]
    lines = [_table([*headers, *errors], body), ""]
    rules = (
        ("decision", "SURE-LET - candidates", "combine", ("combine", "do not combine")),
        ("smoothing_decision", "with the smoothed network - without", "adopt", ("above 0", "not above 0")),
    )
    for key, contrast, flag, (yes, no) in rules:
        for where, found in data.get(key, {}).items():
            mean, low, high = found["difference_db"]
            lines.append(
                f"- {where}: {contrast} {mean:+.2f} dB [{low:+.2f}, {high:+.2f}] ({found['heads']} heads): "
                f"{yes if found[flag] else no}."
            )
    return "\n".join(lines)


def _tissue_noise(data: dict[str, Any]) -> str:
    """The tissue noise estimates over the truth, per generated head and level, and their range."""
    rows = data.get("rows", [])
    body = [
        [str(r["seed"]), r["contrast"], r["noise"], f"{r['voxel_mm']:g}", f"{r['level']:g}", r["shape"]]
        + [_number(r[k], 3) for k in ("tissue_ratio", "haar_ratio")]
        for r in rows
    ]
    headers = ["seed", "contrast", "noise", "mm", "level (/255)", "crop", "weak-texture patches", "Haar MAD"]
    summary = data.get("summary", {})
    ranges = [
        f"{label} {_number(summary[k]['min'], 3)}-{_number(summary[k]['max'], 3)}x"
        for label, k in (("weak-texture patches", "tissue_ratio"), ("Haar MAD", "haar_ratio"))
        if k in summary
    ]
    return "\n".join([_table(headers, body), "", "Estimate over the true level: " + ", ".join(ranges) + "."])


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "demo_recipe": _demo_recipe,
    "tissue_noise": _tissue_noise,
    "guard_family": _guard_family,
    "classical": _classical,
    "real_scans": _real_scans,
    "demo": _demo,
    "demo_seeds": _demo_seeds,
    "study": _study,
    "transcribed": _transcribed,
}


def _short_machine(data: Mapping[str, Any]) -> str:
    """``2026-12-07, AMD EPYC (AVX2)``: the date and CPU of a result, for a summary row."""
    machine = data.get("machine", {})
    date = str(machine.get("date_utc") or data.get("started") or "date not recorded")
    date = date[:10] if re.match(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d", date) else date
    described = str(machine.get("cpu_description", "")).split(",")[0]
    cpu = machine.get("cpu") or described or machine.get("processor") or "CPU not recorded"
    kernels = f" ({machine['torch_cpu_kernels']})" if machine.get("torch_cpu_kernels") else ""
    gpu = f", {machine['cuda']}" if machine.get("cuda") else ""
    where = f"{date}, {cpu}{kernels}{gpu}"
    if data.get("source"):
        return f"{where}; transcribed, not re-measured"
    return where + (", a quick run" if data.get("quick") else "")


def provenance(data: Mapping[str, Any], name: str) -> str:
    """The line above a rendered table: measured when, on what, by which run (or transcribed from where)."""
    machine = data.get("machine", {})
    cpu = machine.get("cpu_description") or machine.get("cpu") or machine.get("processor") or "an unrecorded CPU"
    gpu = f", GPU {machine['cuda']}" if machine.get("cuda") else ""
    date = machine.get("date_utc") or data.get("started") or "on an unrecorded date"
    notes = (", a --quick smoke run" if data.get("quick") else "") + (", PARTIAL run" if data.get("partial") else "")
    threads = (
        f" ({machine['torch_threads']} thread{'s' if machine['torch_threads'] != 1 else ''})"
        if machine.get("torch_threads")
        else ""
    )
    load = f", load average {machine['load_average']:g} at the start" if _is_number(machine.get("load_average")) else ""
    utc = " UTC" if re.match(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d$", str(date)) else ""
    torch = f", torch {machine['torch']}{threads}" if machine.get("torch") else threads
    measured = f"{date}{utc} on {cpu}{gpu}{torch}{load}{notes}"
    if data.get("source"):
        return (
            f"*Rendered from `docs/results/{name}.json` by `python -m benchmarks.report --render`; its figures were "
            f"transcribed from {data['source']}, not re-measured: measured {measured}.*"
        )
    return f"*Rendered from `docs/results/{name}.json` by `python -m benchmarks.report --render`: measured {measured}.*"


_DENOISERS = {"noisy": "noisy", "gaussian": "best Gaussian filter", "nl_means": "non-local means"}


def _demo_denoising(data: Mapping[str, Any]) -> str:
    den, digits = data.get("denoising", {}), int(data.get("digits", 1))
    parts = [f"{label} {_number(den[m]['mean']['psnr_brain'], digits)}" for m, label in _DENOISERS.items() if m in den]
    if "resunet3d" in den:
        parts.append(f"**ResUnet3D {_number(den['resunet3d']['mean']['psnr_brain'], digits)}**")
    return ", ".join(parts)


def _demo_classification(data: Mapping[str, Any]) -> str:
    rows = demo_classification(data)
    return "; ".join(
        f"{name}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in cells.items() if k != "n")
        for name, cells in rows.items()
    )


def _demo_duration(data: Mapping[str, Any]) -> str:
    return f"{data['total_wall_s'] / 60:.1f} minutes wall" if _is_number(data.get("total_wall_s")) else "-"


def _seeds_difference(data: Mapping[str, Any]) -> str:
    where = {"brain": "in the brain", "volume": "over the volume"}
    group = data.get("confirmation") or data  # never the selection seeds: they chose the recipe
    return ", ".join(
        f"{_seeds_cell(d)} {where.get(d['region'], d['region'])}"
        for d in group.get("differences", [])
        if d["contrast"] == "resunet3d - nl_means"
    )


def _target_cell(target: Mapping[str, Any]) -> str:
    """One measured target: its value (a ratio for speed, else dB) and whether it was met, or by how much missed."""
    ratio = "seconds" in target["target"]
    value = f"{target['value']:.1f}x" if ratio else f"{_signed(target['value'], 2)} dB"
    margin = target.get("margin")
    by = f" by {abs(margin):.2f}{'' if ratio else ' dB'}" if _is_number(margin) else ""
    verdict = "met" if target["met"] else f"**missed{by}**"
    return f"{target['target']}: {value} ({verdict})"


def _real_scans_targets(data: Mapping[str, Any], adaptation: bool = False) -> str:
    """The issue's targets a real-scan run measured: those after site adaptation, or every other one."""
    return "; ".join(
        _target_cell(t)
        for t in data.get("targets", [])
        if _is_number(t.get("value")) and t["target"].startswith("after site adaptation") == adaptation
    )


def _quality_bm4d_target(data: Mapping[str, Any]) -> str:
    """The cohort target of ``benchmarks.quality``: its longest ResUnet3D run minus BM4D at Gaussian 15, >= +1 dB."""
    by = {row["method"]: row for row in data.get("summary", [])}
    runs = [m for m in by if m.startswith("resunet3d (") and _is_number(by[m].get("g15_psnr"))]
    if "bm4d" not in by or not runs:
        return "-"
    longest = max(runs, key=lambda m: float(m.split("(")[1].split()[0]))
    value = by[longest]["g15_psnr"] - by["bm4d"]["g15_psnr"]
    target = {"target": f"{longest} - BM4D (target >= +1 dB)", "value": value, "met": value >= 1.0}
    return _target_cell({**target, "margin": value - 1.0})


def _whole_head_speed(data: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{r['seconds']:.0f} s at {_number(r.get('peak_rss_mib', 0) / 1024, 2)} GiB peak ({r['tiles']}³ tiles, "
        f"{r['precision']})"
        for r in data.get("rows", [])
        if _is_number(r.get("seconds"))
    )


def _study_verdicts(data: Mapping[str, Any]) -> str:
    """The arms grouped by verdict (PSNR in the brain), then each transfer contrast's answer."""
    groups: dict[str, list[str]] = {}
    seeds = set()
    for row in data.get("arms", []):
        diff = row.get("diff_psnr_brain")
        if diff:
            groups.setdefault(str(diff.get("verdict", "-")), []).append(str(row["arm"]))
            seeds.add(diff.get("seeds"))
    parts = [f"{verdict}: {', '.join(arms)}" for verdict, arms in sorted(groups.items())]
    counted = "/".join(str(n) for n in sorted(n for n in seeds if n))
    text = f"(a) {'; '.join(parts)}" + (f" ({counted} seeds)" if counted else "") if parts else ""
    contrasts = (data.get("transfer") or {}).get("contrasts", [])
    if contrasts:
        answers = Counter(str(c.get("answer", "-")) for c in contrasts)
        counts = ", ".join(f"{n} {answer}" for answer, n in sorted(answers.items()))
        found = sorted({c["diff_auc"]["seeds"] for c in contrasts if (c.get("diff_auc") or {}).get("seeds")})
        text += f"; (b) denoising pretraining vs a random encoder, {len(contrasts)} AUC contrasts: {counts}"
        text += f" ({'/'.join(map(str, found))} seeds)" if found else ""
    return text or "-"


#: What a summary row shows of a result: ``(kind, headline)`` -> a function of the result's JSON.
HEADLINES: dict[tuple[str, str], Callable[[Mapping[str, Any]], str]] = {
    ("demo", "denoising"): _demo_denoising,
    ("demo", "classification"): _demo_classification,
    ("demo", "duration"): _demo_duration,
    ("demo_seeds", "difference"): _seeds_difference,
    ("study", "verdicts"): _study_verdicts,
    ("real_scans", "targets"): _real_scans_targets,
    ("real_scans", "adaptation"): lambda data: _real_scans_targets(data, adaptation=True),
    ("quality", "bm4d_target"): _quality_bm4d_target,
    ("whole_head", "speed"): _whole_head_speed,
    ("transcribed", "headline"): lambda data: str(data["headline"]),
}


def render_summary(data: Mapping[str, Any], results: str | Path) -> str:
    """A table drawing one row from each result it names (``rows``: ``what``, ``link``, ``result``, ``headline``).

    Each row's last cell is the date and CPU of the result it came from, and whether it was transcribed.

    Raises:
        ResultsBlockError: for a row naming a missing result or a headline its kind does not have.
    """
    body = []
    for row in data.get("rows", []):
        source = load_result(row["result"], results)
        key = (kind_of(source, row["result"]), row["headline"])
        if key not in HEADLINES:
            raise ResultsBlockError(f"summary row {row['what']!r}: no headline {key} (benchmarks.tables.HEADLINES)")
        what = f"[{row['what']}]({row['link']})" if row.get("link") else row["what"]
        body.append([what, HEADLINES[key](source), _short_machine(source)])
    return _table(["what", "result", "measured"], body)
