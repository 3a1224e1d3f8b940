"""Summarise benchmark JSON files as Markdown, and render the documentation's tables from the recorded ones.

Run:

* ``python -m benchmarks.report [--results benchmarks/results]`` prints one section per JSON file found, with its
  date, machine and the target ratios.
* ``python -m benchmarks.report --record benchmarks/results/NAME.json`` copies a result into ``docs/results/`` (the
  committed, recorded results) and renders the pages.
* ``python -m benchmarks.report --render`` rewrites every block of ``docs/*.md`` (and ``README.md``) that sits between
  ``<!-- results:NAME -->`` and ``<!-- /results -->`` from ``docs/results/NAME.json``; ``--check`` only reports
  the blocks that differ and exits 1 (``tests/test_docs.py`` runs it), so a figure on a page is the figure its
  JSON holds.

Nothing is measured here. A block's text is a function of its JSON alone: the provenance line (date, CPU, torch)
from ``machine``, then a table chosen by the JSON's ``benchmark`` (:data:`RENDERERS`; any other benchmark gets the
summary's tables).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import format_table

__all__ = [
    "MARKER",
    "RENDERERS",
    "ResultsBlockError",
    "main",
    "page_blocks",
    "record",
    "render_block",
    "render_pages",
    "render_text",
    "summarise",
]

ROOT = Path(__file__).resolve().parents[1]
#: The committed, recorded results the documentation renders from (kilobytes of JSON each).
DOCS_RESULTS = ROOT / "docs" / "results"
#: The pages whose blocks are rendered: every page of the site, and the README.
DOCS_PAGES = ("README.md", "docs/*.md")
#: ``<!-- results:NAME -->`` ... ``<!-- /results -->``: NAME is the stem of ``docs/results/NAME.json``.
MARKER = re.compile(r"(<!-- results:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)

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


class ResultsBlockError(ValueError):
    """A results block names a JSON file that does not exist or cannot be read."""


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
    lines += ["| " + " | ".join(row) + " |" for row in rows]
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


#: How each benchmark's JSON becomes a table (by its ``benchmark`` field); the others use :func:`_generic`.
RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {"classical": _classical, "real_scans": _real_scans}


def _provenance(data: dict[str, Any], name: str) -> str:
    machine = data.get("machine", {})
    cpu = machine.get("cpu_description") or machine.get("cpu", "an unrecorded CPU")
    gpu = f", GPU {machine['cuda']}" if machine.get("cuda") else ""
    notes = (", a --quick smoke run" if data.get("quick") else "") + (", PARTIAL run" if data.get("partial") else "")
    return (
        f"*Rendered from `docs/results/{name}.json` by `python -m benchmarks.report --render`: measured "
        f"{machine.get('date_utc', 'on an unrecorded date')} UTC on {cpu}{gpu}, torch {machine.get('torch', '?')} "
        f"({machine.get('torch_threads', '?')} threads){notes}.*"
    )


def render_block(name: str, results: str | Path = DOCS_RESULTS) -> str:
    """The Markdown of one results block: a provenance line, then the benchmark's table.

    Args:
        name: the JSON file's stem (``<!-- results:NAME -->``).
        results: the folder of recorded results.

    Returns:
        The block's body, ending with a newline.

    Raises:
        ResultsBlockError: if ``results/NAME.json`` is missing or not JSON.
    """
    path = Path(results) / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsBlockError(f"results block {name!r}: no {path} (record it with --record)") from None
    except json.JSONDecodeError as error:
        raise ResultsBlockError(f"results block {name!r}: {path} is not JSON: {error}") from None
    table = RENDERERS.get(data.get("benchmark", name), _generic)(data).strip()
    return f"\n{_provenance(data, name)}\n\n{table}\n\n"


def _fenced(text: str) -> list[tuple[int, int]]:
    """The character spans of the fenced code blocks of a Markdown text (an example marker there is no block)."""
    spans, start, offset = [], None, 0
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("```"):
            if start is None:
                start = offset
            else:
                spans.append((start, offset + len(line)))
                start = None
        offset += len(line)
    return spans + ([(start, offset)] if start is not None else [])


def _blocks(text: str) -> list[re.Match[str]]:
    spans = _fenced(text)
    return [m for m in MARKER.finditer(text) if not any(a <= m.start() < b for a, b in spans)]


def page_blocks(text: str) -> list[str]:
    """The names of the results blocks of a Markdown text, in order (not counting examples in code blocks)."""
    return [match.group("name") for match in _blocks(text)]


def render_text(text: str, results: str | Path = DOCS_RESULTS) -> str:
    """A Markdown text with every results block rendered from its JSON (the markers kept)."""
    out, last = [], 0
    for m in _blocks(text):
        out += [text[last : m.start()], m.group(1), render_block(m.group("name"), results), m.group(4)]
        last = m.end()
    return "".join(out) + text[last:]


def _pages(root: Path, patterns: Sequence[str] = DOCS_PAGES) -> list[Path]:
    return [path for pattern in patterns for path in sorted(root.glob(pattern))]


def render_pages(root: str | Path = ROOT, results: str | Path | None = None, check: bool = False) -> list[Path]:
    """Render the results blocks of the README and every ``docs/*.md``.

    Args:
        root: the repository root.
        results: the recorded results (default ``<root>/docs/results``).
        check: report the pages whose blocks differ from their JSON, and write nothing.

    Returns:
        The pages that differed (and, without ``check``, were rewritten).
    """
    root = Path(root)
    results = root / "docs" / "results" if results is None else Path(results)
    changed = []
    for page in _pages(root):
        text = page.read_text()
        rendered = render_text(text, results)
        if rendered != text:
            changed.append(page)
            if not check:
                page.write_text(rendered)
    return changed


def record(paths: Sequence[str | Path], results: str | Path = DOCS_RESULTS) -> list[Path]:
    """Copy benchmark results into the recorded results (``docs/results/<stem>.json``), checked to be JSON.

    Returns:
        The recorded copies.

    Raises:
        ResultsBlockError: for a file that is not JSON or has no ``machine`` (not written by a benchmark).
    """
    out = []
    for path in map(Path, paths):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ResultsBlockError(f"cannot record {path}: {error}") from None
        if "machine" not in data:
            raise ResultsBlockError(f"cannot record {path}: no 'machine' (not written by benchmarks' write_json)")
        Path(results).mkdir(parents=True, exist_ok=True)
        out.append(Path(shutil.copyfile(path, Path(results) / path.name)))
    return out


def main(argv: list[str] | None = None) -> str:
    """Print the Markdown summary of every ``*.json`` in the results folder, or record and render the docs' results.

    Args:
        argv: command-line arguments (default: ``sys.argv``).

    Returns:
        The printed text.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--record", nargs="+", metavar="JSON", help="copy these results into docs/results, then render")
    parser.add_argument("--render", action="store_true", help="rewrite the pages' results blocks from docs/results")
    parser.add_argument("--check", action="store_true", help="list the results blocks that differ from docs/results")
    args = parser.parse_args(argv)
    if args.record or args.render or args.check:
        lines = [f"recorded {path.relative_to(ROOT)}" for path in record(args.record or [])]
        changed = render_pages(check=args.check)
        verb = "differs from its JSON" if args.check else "rendered"
        lines += [f"{path.relative_to(ROOT)}: {verb}" for path in changed] or ["every results block is up to date"]
        text = "\n".join(lines)
        print(text)
        if args.check and changed:
            sys.exit(1)
        return text
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
