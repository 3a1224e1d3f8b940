"""Pieces of the demo's report: image-quality scores, Markdown tables, tri-planar and training-curve figures.

Everything here turns numbers and volumes measured by a run into report material; nothing holds a result of its
own. Figures are PNG files drawn with matplotlib's non-interactive ``Agg`` backend (no display needed), written
atomically (:func:`pipeline.utils.files.atomic_path`).

The image-quality scores a report shows come from :func:`pipeline.evaluation.metrics.volume_quality`, the engines'
own metrics, so the report's figures and the training's TensorBoard figures are the same quantities.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluation.metrics import as_volume
from pipeline.utils.files import atomic_path
from transforms.intensity import robust_max

__all__ = [
    "Report",
    "curves_figure",
    "format_number",
    "markdown_table",
    "pyplot",
    "read_scalars",
    "save_figure",
    "triplanar_figure",
]

_PLANES = ("axial", "coronal", "sagittal")


def format_number(value: Any, digits: int = 2) -> str:
    """Format a table cell: numbers with ``digits`` decimals, ``None``/NaN as ``n/a``, anything else as ``str``.

    Args:
        value: the cell.
        digits: decimals for floats.

    Returns:
        The text.
    """
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "n/a" if not math.isfinite(float(value)) else f"{float(value):.{digits}f}"
    return str(value)


def markdown_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    digits: int | Sequence[int] = 2,
    align: str | None = None,
) -> str:
    """A GitHub-flavoured Markdown table.

    Args:
        headers: column titles.
        rows: one sequence of cells per row, as long as ``headers``.
        digits: decimals of float cells, one for all columns or one per column.
        align: one letter per column, ``l`` (left) or ``r`` (right); default: the first column left, the rest right.

    Returns:
        The table, lines joined by newlines (no trailing newline).

    Raises:
        ValueError: for rows of the wrong length, or ``digits``/``align`` of the wrong length or letters.
    """
    n = len(headers)
    if n == 0:
        raise ValueError("headers must name at least one column")
    per_column = [digits] * n if isinstance(digits, int) else list(digits)
    if len(per_column) != n:
        raise ValueError(f"digits must be one int or one per column ({n}), got {len(per_column)}")
    align = align or "l" + "r" * (n - 1)
    if len(align) != n or set(align) - {"l", "r"}:
        raise ValueError(f"align must have one letter 'l' or 'r' per column ({n}), got {align!r}")
    for i, row in enumerate(rows):
        if len(row) != n:
            raise ValueError(f"row {i} has {len(row)} cells, expected {n}: {list(row)}")

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rule = ["---:" if a == "r" else ":---" for a in align]
    body = [line([format_number(cell, d) for cell, d in zip(row, per_column)]) for row in rows]
    return "\n".join([line([str(h) for h in headers]), "| " + " | ".join(rule) + " |", *body])


def _centre(mask: np.ndarray | None, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if mask is not None and np.any(mask > 0):
        return tuple(int(round(c)) for c in np.argwhere(mask > 0).mean(axis=0))  # type: ignore[return-value]
    return tuple(s // 2 for s in shape)  # type: ignore[return-value]


def _slices(volume: np.ndarray, centre: Sequence[int]) -> dict[str, np.ndarray]:
    """Axial, coronal and sagittal slices through ``centre`` of a RAS ``(X, Y, Z)`` volume, oriented for ``imshow``.

    Each slice is transposed so that ``imshow(..., origin="lower")`` shows anterior (axial) or superior (coronal,
    sagittal) at the top.
    """
    x, y, z = centre
    return {"axial": volume[:, :, z].T, "coronal": volume[:, y, :].T, "sagittal": volume[x, :, :].T}


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Write a Matplotlib figure to ``path`` as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def triplanar_figure(
    volumes: Mapping[str, Any],
    path: str | os.PathLike,
    title: str = "",
    error_of: tuple[str, str] | None = None,
    mask: Any = None,
    vmax: float | None = None,
) -> Path:
    """Tri-planar slices (axial, coronal, sagittal through the brain's centre) of several volumes, one row each.

    Args:
        volumes: ``{row title: volume (X, Y, Z) in RAS}``, all the same shape and intensity scale (e.g. noisy,
            denoised, clean).
        path: the PNG to write.
        title: the figure title.
        error_of: ``(a, b)``: add a row ``|a - b|`` (e.g. ``("denoised", "clean")``) on its own colour scale.
        mask: optional brain mask (X, Y, Z); the slices go through its centroid (default: the volume centre).
        vmax: the grey-scale maximum of the image rows (default: the robust maximum of the first volume,
            :func:`transforms.intensity.robust_max`).

    Returns:
        ``path``.

    Raises:
        ValueError: for no volumes, volumes of different shapes, or ``error_of`` naming a missing row.
    """
    if not volumes:
        raise ValueError("volumes must hold at least one volume")
    arrays = {name: as_volume(v, name) for name, v in volumes.items()}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1:
        raise ValueError(f"volumes must have one shape, got {sorted(shapes)}")
    rows = list(arrays.items())
    if error_of is not None:
        missing = [n for n in error_of if n not in arrays]
        if missing:
            raise ValueError(f"error_of names {missing}, which are not among the volumes {list(arrays)}")
        a, b = error_of
        rows.append((f"|{a} - {b}|", np.abs(arrays[a] - arrays[b])))
    shape = next(iter(shapes))
    centre = _centre(None if mask is None else as_volume(mask, "mask"), shape)
    first = rows[0][1]
    if vmax is None:
        vmax = robust_max(first, default=1.0)
    error_max = None
    if error_of is not None:
        error_max = max(float(np.percentile(rows[-1][1], 99.9)), 1e-6)

    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 2.9 * len(rows)), squeeze=False)
    for r, (name, volume) in enumerate(rows):
        is_error = error_of is not None and r == len(rows) - 1
        for c, (plane, image) in enumerate(_slices(volume, centre).items()):
            ax = axes[r][c]
            shown = ax.imshow(
                image,
                cmap="magma" if is_error else "gray",
                vmin=0.0,
                vmax=error_max if is_error else vmax,
                origin="lower",
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(plane)
            if c == 0:
                ax.set_ylabel(name)
        if is_error:
            fig.colorbar(shown, ax=list(axes[r]), fraction=0.02, pad=0.01)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def read_scalars(logdir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Read every scalar series of the TensorBoard event files in ``logdir`` (not its sub-folders).

    Args:
        logdir: a run folder holding ``events.out.tfevents.*`` files.

    Returns:
        ``{tag: [(step, value), ...]}`` sorted by step (a step logged twice, e.g. after a resume, keeps the last).

    Raises:
        FileNotFoundError: if ``logdir`` holds no event file.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = Path(logdir)
    files = sorted(logdir.glob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"{logdir} holds no TensorBoard event file (events.out.tfevents.*)")
    series: dict[str, dict[int, float]] = {}
    for file in files:
        accumulator = EventAccumulator(os.fspath(file), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("scalars", []):
            points = series.setdefault(tag, {})
            for event in accumulator.Scalars(tag):
                points[int(event.step)] = float(event.value)
    return {tag: sorted(points.items()) for tag, points in series.items()}


def curves_figure(
    panels: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]],
    path: str | os.PathLike,
    xlabels: Mapping[str, str] | None = None,
    columns: int = 2,
) -> Path:
    """Training curves: one panel per entry, one line per series.

    Args:
        panels: ``{panel title: {series label: [(x, y), ...]}}``; empty series are skipped.
        path: the PNG to write.
        xlabels: optional x-axis label per panel title (default ``"epoch"``).
        columns: panels per row.

    Returns:
        ``path``.

    Raises:
        ValueError: for no panels, a panel without any point, or ``columns < 1``.
    """
    if not panels:
        raise ValueError("panels must hold at least one panel")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    for title, series in panels.items():
        if not any(len(points) for points in series.values()):
            raise ValueError(f"panel {title!r} has no data point")
    plt = pyplot()
    n_rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(n_rows, columns, figsize=(5.2 * columns, 3.6 * n_rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, (title, series) in zip(flat, panels.items()):
        for label, points in series.items():
            if not len(points):
                continue
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=label, marker="o" if len(xs) <= 30 else None, markersize=3)
        ax.set_title(title)
        ax.set_xlabel((xlabels or {}).get(title, "epoch"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return save_figure(fig, path)


class Report:
    """A Markdown document built section by section, with figure links relative to the report's folder.

    Args:
        path: the ``.md`` file the report will be written to (its folder holds the figures).
        title: the level-1 heading.

    Example:
        >>> report = Report("demo/report.md", "Demo")  # doctest: +SKIP
        >>> report.table(["a", "b"], [[1, 2.0]])  # doctest: +SKIP
        >>> report.write()  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike, title: str) -> None:
        self.path = Path(path)
        self._parts: list[str] = [f"# {title}"]

    def heading(self, text: str, level: int = 2) -> None:
        """Add a heading.

        Args:
            text: the heading text.
            level: 2-6.

        Raises:
            ValueError: for a level outside 2-6.
        """
        if not 2 <= level <= 6:
            raise ValueError(f"level must be in 2..6 (1 is the title), got {level}")
        self._parts.append(f"{'#' * level} {text}")

    def paragraph(self, text: str) -> None:
        """Add a paragraph (Markdown allowed)."""
        self._parts.append(text.strip())

    def table(
        self,
        headers: Sequence[str],
        rows: Sequence[Sequence[Any]],
        digits: int | Sequence[int] = 2,
        note: str = "",
        align: str | None = None,
    ) -> None:
        """Add a table (:func:`markdown_table`), optionally followed by a note in italics.

        Args:
            headers: column titles.
            rows: cells.
            digits: decimals of float cells.
            note: text under the table.
            align: column alignment letters (see :func:`markdown_table`).
        """
        self._parts.append(markdown_table(headers, rows, digits, align))
        if note:
            self._parts.append(f"*{note.strip()}*")

    def figure(self, path: str | os.PathLike, caption: str) -> None:
        """Add an image link to a figure file, relative to the report's folder.

        Args:
            path: the PNG (it must exist).
            caption: the alt text and caption.

        Raises:
            FileNotFoundError: if the figure does not exist.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"figure {path} does not exist")
        relative = os.path.relpath(path.resolve(), self.path.parent.resolve())
        self._parts.append(f"![{caption}]({Path(relative).as_posix()})\n\n*{caption}*")

    def text(self) -> str:
        """The Markdown so far."""
        return "\n\n".join(self._parts) + "\n"

    def write(self) -> Path:
        """Write the report atomically.

        Returns:
            The report's path.
        """
        with atomic_path(self.path) as tmp:
            tmp.write_text(self.text(), encoding="utf-8")
        return self.path
