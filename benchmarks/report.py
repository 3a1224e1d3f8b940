"""Summarise benchmark JSON files as Markdown, and render the documentation's tables and plots from the recorded ones.

Run:

* ``python -m benchmarks.report [--results benchmarks/results]`` prints one section per JSON file found, with its
  date, machine and the target ratios.
* ``python -m benchmarks.report --record benchmarks/results/NAME.json`` copies a result into ``docs/results/`` (the
  committed, recorded results) and renders the pages; ``--record demo/results.json --as demo`` records under
  another name (the demo's and the study's ``results.json``).
* ``python -m benchmarks.report --render`` rewrites every block of ``docs/*.md`` (and ``README.md``) that sits between
  ``<!-- results:NAME -->`` and ``<!-- /results -->`` from ``docs/results/NAME.json``, and every plot block
  ``<!-- figure:NAME:PLOT -->`` ... ``<!-- /figure -->`` together with its PNG, ``docs/images/NAME-PLOT.png``;
  ``--check`` only reports the blocks and images that differ and exits 1 (``tests/test_docs.py`` runs it), so a
  figure on a page is the figure its JSON holds.

Nothing is measured here. A block's text is a function of its JSON alone: the provenance line (date, CPU, torch, or
where a transcribed figure came from), then a table chosen by the JSON's kind (:data:`benchmarks.tables.RENDERERS`;
any other benchmark gets the summary's tables), then its ``notes``. A ``summary`` JSON draws one row from each result
it names (:func:`benchmarks.tables.render_summary`). The plots are :data:`benchmarks.plots.PLOTS`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.tables import (
    RENDERERS,
    ResultsBlockError,
    kind_of,
    load_result,
    provenance,
    render_summary,
    render_table,
    summarise,
)

__all__ = [
    "MARKER",
    "RENDERERS",
    "ResultsBlockError",
    "main",
    "page_blocks",
    "record",
    "render_block",
    "render_figure",
    "render_pages",
    "render_text",
    "summarise",
]

ROOT = Path(__file__).resolve().parents[1]
#: The committed, recorded results the documentation renders from (kilobytes of JSON each).
DOCS_RESULTS = ROOT / "docs" / "results"
#: The pages whose blocks are rendered: every page of the site, and the README.
DOCS_PAGES = ("README.md", "docs/*.md")
#: ``<!-- results:NAME -->`` ... ``<!-- /results -->`` (a table) or ``<!-- figure:NAME:PLOT -->`` ...
#: ``<!-- /figure -->`` (a plot): NAME is the stem of ``docs/results/NAME.json``.
MARKER = re.compile(
    r"(<!-- (?P<what>results|figure):(?P<name>[\w.-]+)(?::(?P<plot>[\w-]+))? -->\n)(?P<body>.*?)(<!-- /(?P=what) -->)",
    re.S,
)


def render_block(name: str, results: str | Path = DOCS_RESULTS) -> str:
    """The Markdown of one results block: a provenance line, the result's table, then its ``notes``.

    Args:
        name: the JSON file's stem (``<!-- results:NAME -->``).
        results: the folder of recorded results.

    Returns:
        The block's body, ending with a newline.

    Raises:
        ResultsBlockError: if ``results/NAME.json`` is missing or not JSON.
    """
    data = load_result(name, results)
    kind = kind_of(data, name)
    if kind == "summary":
        line = (
            f"*Rendered from `docs/results/{name}.json` by `python -m benchmarks.report --render`: each row from the "
            "result it names; the last column says when and on what CPU it was measured.*"
        )
        table = render_summary(data, results)
    else:
        line, table = provenance(data, name), render_table(data, kind)
    notes = "".join(f"- {note}\n" for note in data.get("notes", []))
    return f"\n{line}\n\n{table}\n\n" + (f"{notes}\n" if notes else "")


def render_figure(name: str, plot: str, results: str | Path = DOCS_RESULTS) -> tuple[str, bytes]:
    """One plot of a recorded result: its caption (with the provenance) and its PNG bytes.

    Raises:
        ResultsBlockError: for a missing result, or a plot its kind does not have.
    """
    from benchmarks.plots import PLOTS, png_bytes

    data = load_result(name, results)
    kind = kind_of(data, name)
    if plot not in PLOTS.get(kind, {}):
        raise ResultsBlockError(f"figure {name}:{plot}: a {kind!r} result has no plot {plot!r} (benchmarks.plots)")
    figure, caption = PLOTS[kind][plot](data, Path(results))
    return caption, png_bytes(figure)


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
    """The names of the results a Markdown text's blocks render, in order (not counting examples in code blocks)."""
    return [match.group("name") for match in _blocks(text)]


def _render(text: str, results: Path, images: str) -> tuple[str, dict[str, bytes]]:
    """The text with every block rendered, and the PNGs its figure blocks show (by file name)."""
    out, last, pngs = [], 0, {}
    for m in _blocks(text):
        if m.group("what") == "results":
            body = render_block(m.group("name"), results)
        else:
            file = f"{m.group('name')}-{m.group('plot')}.png"
            caption, pngs[file] = render_figure(m.group("name"), m.group("plot"), results)
            line = provenance(load_result(m.group("name"), results), m.group("name"))
            alt = f"{m.group('name')}, {m.group('plot')}"
            body = f"\n![{alt}]({images}/{file})\n\n{caption} {line}\n\n"
        out += [text[last : m.start()], m.group(1), body, m.group(6)]
        last = m.end()
    return "".join(out) + text[last:], pngs


def render_text(text: str, results: str | Path = DOCS_RESULTS, images: str = "images") -> str:
    """A Markdown text with every block rendered from its JSON (the markers kept; ``images``: the PNGs' folder)."""
    return _render(text, Path(results), images)[0]


def _pages(root: Path, patterns: Sequence[str] = DOCS_PAGES) -> list[Path]:
    return [path for pattern in patterns for path in sorted(root.glob(pattern))]


def render_pages(root: str | Path = ROOT, results: str | Path | None = None, check: bool = False) -> list[Path]:
    """Render the blocks of the README and every ``docs/*.md``, and their PNGs into ``docs/images/``.

    Args:
        root: the repository root.
        results: the recorded results (default ``<root>/docs/results``).
        check: report the pages and images that differ from their JSON, and write nothing.

    Returns:
        The pages and images that differed (and, without ``check``, were rewritten).
    """
    root = Path(root)
    results = root / "docs" / "results" if results is None else Path(results)
    image_dir = root / "docs" / "images"
    changed, pngs = [], {}
    for page in _pages(root):
        text = page.read_text()
        rendered, found = _render(text, results, Path(os.path.relpath(image_dir, page.parent)).as_posix())
        pngs.update(found)
        if rendered != text:
            changed.append(page)
            if not check:
                page.write_text(rendered)
    for file, data in sorted(pngs.items()):
        path = image_dir / file
        if not path.is_file() or path.read_bytes() != data:
            changed.append(path)
            if not check:
                image_dir.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
    return changed


def record(paths: Sequence[str | Path], results: str | Path = DOCS_RESULTS, name: str | None = None) -> list[Path]:
    """Copy benchmark results into the recorded results (``docs/results/<stem>.json``), checked to be JSON.

    Args:
        paths: the results to record.
        results: the folder of recorded results.
        name: record the one result under this name instead of its file's stem (e.g. ``demo``).

    Returns:
        The recorded copies.

    Raises:
        ResultsBlockError: for a file that is not JSON or has no ``machine`` (not written by a benchmark), or a
            ``name`` given with several files.
    """
    if name is not None and len(paths) != 1:
        raise ResultsBlockError(f"--as {name}: record one file at a time under a new name, got {len(paths)}")
    out = []
    for path in map(Path, paths):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ResultsBlockError(f"cannot record {path}: {error}") from None
        if "machine" not in data:
            raise ResultsBlockError(f"cannot record {path}: no 'machine' (not written by a benchmark or the demo)")
        Path(results).mkdir(parents=True, exist_ok=True)
        out.append(Path(shutil.copyfile(path, Path(results) / f"{name or path.stem}.json")))
    return out


def _record_and_render(args: argparse.Namespace) -> str:
    lines = [f"recorded {path.relative_to(ROOT)}" for path in record(args.record or [], name=args.name)]
    changed = render_pages(check=args.check)
    verb = "differs from its JSON" if args.check else "rendered"
    lines += [f"{path.relative_to(ROOT)}: {verb}" for path in changed] or ["every results block is up to date"]
    return "\n".join(lines)


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
    parser.add_argument("--as", dest="name", metavar="NAME", help="record the one JSON as docs/results/NAME.json")
    parser.add_argument("--render", action="store_true", help="rewrite the pages' blocks and plots from docs/results")
    parser.add_argument("--check", action="store_true", help="list the blocks and plots that differ from docs/results")
    args = parser.parse_args(argv)
    if args.name and not args.record:
        parser.error("--as needs --record")
    if args.record or args.render or args.check:
        text = _record_and_render(args)
        print(text)
        if args.check and "differs" in text:
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
