"""The documentation's plots (PNG), drawn from the recorded results, byte for byte the same on every run.

Each plot is a function of one recorded result (``docs/results/NAME.json``, and for the slices the ``.npz`` it
names beside it) that returns a matplotlib figure and its caption; :data:`PLOTS` picks it by the result's kind and
the plot's name (``<!-- figure:NAME:PLOT -->`` on a page). :func:`png_bytes` draws with the Agg canvas (no pyplot, no
display), a fixed size and resolution and no date or software stamp, so the same JSON gives the same bytes.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["PLOTS", "png_bytes"]

#: Resolution of every PNG (dots per inch); the figures are 6-7 inches wide.
DPI = 90


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG bytes, with no metadata that changes between runs."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight")
    return buffer.getvalue()


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _levels(data: Mapping[str, Any], folder: Path) -> tuple[Figure, str]:
    """Mean PSNR in the head mask per method over the added noise levels (scans and noise kinds pooled)."""
    rows = data.get("rows", [])
    levels = sorted({float(r["level"]) for r in rows})
    figure = Figure(figsize=(6.5, 3.6))
    ax = figure.add_subplot()
    for method in dict.fromkeys(r["method"] for r in rows):
        means = [
            _mean([r["psnr_head"] for r in rows if r["method"] == method and float(r["level"]) == lv]) for lv in levels
        ]
        style = {"lw": 2.5, "color": "k"} if method == "default" else {"lw": 1.2}
        ax.plot(levels, means, marker="o", label=method, **style)
    ax.set_xlabel("added noise level (/255 of the scan's robust maximum)")
    ax.set_ylabel("PSNR in the head mask (dB)")
    ax.set_xticks(levels)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    scans = ", ".join(dict.fromkeys(r["scan"] for r in rows))
    return figure, f"Denoising PSNR over the noise level, mean over the scans ({scans}) and noise kinds."


def _forest(data: Mapping[str, Any], folder: Path) -> tuple[Figure, str]:
    """Each arm's difference from the baseline: the bootstrap interval (grey), the t interval (black) if recorded."""
    arms = [a for a in data.get("arms", []) if a.get("diff_psnr_brain")]
    figure = Figure(figsize=(6.5, 0.32 * len(arms) + 1.3))
    ax = figure.add_subplot()
    margin = 0.0
    for k, arm in enumerate(arms):
        diff = arm["diff_psnr_brain"]
        margin = float(diff.get("margin", margin))
        estimate = diff["estimate"]
        for offset, key, color in ((0.15, "bootstrap_interval", "grey"), (-0.15, "t_interval", "k")):
            if diff.get(key):
                low, high = diff[key]
                ax.errorbar(
                    estimate, k + offset, xerr=[[estimate - low], [high - estimate]], fmt="o", color=color, capsize=3
                )
    ax.axvline(0.0, color="grey", lw=1)
    if margin:
        ax.axvspan(-margin, margin, color="grey", alpha=0.2)
    ax.set_yticks(range(len(arms)), [f"{a['arm']} ({a['diff_psnr_brain'].get('verdict', '?')})" for a in arms])
    ax.invert_yaxis()
    ax.set_xlabel("PSNR in the brain, arm - baseline (dB)")
    ax.grid(axis="x", alpha=0.3)
    return figure, "Each arm minus the baseline: bootstrap interval in grey, t interval in black where recorded."


def _budget(encoder: str) -> float | None:
    """The pretraining budget of a transfer encoder: 0 for ``random``, 1 for ``denoiser``, x for ``denoiser_xX``."""
    if encoder == "random":
        return 0.0
    found = re.fullmatch(r"denoiser(?:_x([\d.]+))?", encoder)
    return None if found is None else float(found.group(1) or 1.0)


def _transfer(data: Mapping[str, Any], folder: Path) -> tuple[Figure, str]:
    """AUC over the pretraining budget (0: a random encoder), one line per evaluation and labelled-set size."""
    rows = [r for r in (data.get("transfer") or {}).get("rows", []) if _budget(r["encoder"]) is not None]
    figure = Figure(figsize=(6.5, 3.6))
    ax = figure.add_subplot()
    for evaluation, size in dict.fromkeys((r["evaluation"], r["size"]) for r in rows):
        mine = sorted(
            (r for r in rows if (r["evaluation"], r["size"]) == (evaluation, size)), key=lambda r: _budget(r["encoder"])
        )
        x = [_budget(r["encoder"]) for r in mine]
        est, low, high = (np.array([r["auc"][i] for r in mine]) for i in range(3))
        ax.errorbar(x, est, yerr=[est - low, high - est], marker="o", capsize=3, label=f"{evaluation}, {size} set")
    for floor in (data.get("transfer") or {}).get("rows", []):
        if floor["encoder"] == "logistic floor":
            ax.axhline(floor["auc"][0], ls=":", color="grey", lw=1)
    ax.set_xlabel("denoising pretraining budget (x the study's pretraining steps; 0: random encoder)")
    ax.set_ylabel("AUC on the test subjects")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure, "Transfer: AUC over the pretraining budget, 95 % intervals; dotted: the logistic-regression floors."


def _slices(data: Mapping[str, Any], folder: Path) -> tuple[Figure, str]:
    """Noisy / denoised / clean slices of a real head, saved beside the JSON (``slices_file``)."""
    with np.load(folder / data["slices_file"]) as saved:
        panels = [(key, np.asarray(saved[key], dtype=np.float32)) for key in ("noisy", "denoised", "clean")]
    figure = Figure(figsize=(7.5, 3.0))
    psnr = data.get("psnr_head", {})
    for k, (key, image) in enumerate(panels):
        ax = figure.add_subplot(1, 3, k + 1)
        ax.imshow(
            np.rot90(image), cmap="gray", vmin=0.0, vmax=float(data.get("display_max", 1.0)), interpolation="nearest"
        )
        title = key + (f", {psnr[key]:.1f} dB" if key in psnr else "")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    noise = data.get("noise", {})
    caption = (
        f"{data.get('scan', {}).get('description', 'a real head')}: {noise.get('kind', '?')} noise of "
        f"{noise.get('level_255', '?'):g}/255 added, denoised by {data.get('denoiser', 'the ready denoiser')}; PSNR in "
        f"the head mask over the whole volume."
    )
    return figure, caption


def _curves(data: Mapping[str, Any], folder: Path) -> tuple[Figure, str]:
    """Transcribed curves (``curves``: ``x``, ``y``, ``series``: name -> ``[[x, y], ...]``)."""
    curves = data["curves"]
    figure = Figure(figsize=(6.5, 3.6))
    ax = figure.add_subplot()
    for name, points in curves["series"].items():
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xscale(curves.get("xscale", "linear"))
    ax.set_xlabel(curves["x"])
    ax.set_ylabel(curves["y"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure, curves.get("caption", "")


#: ``kind -> plot name -> function(result, its folder) -> (figure, caption)``.
PLOTS: dict[str, dict[str, Callable[[Mapping[str, Any], Path], tuple[Figure, str]]]] = {
    "real_scans": {"levels": _levels},
    "study": {"forest": _forest, "transfer": _transfer},
    "figures": {"slices": _slices},
    "transcribed": {"curves": _curves},
}
