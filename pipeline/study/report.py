"""The study's report: every question with its answer, the number, its interval and the command that produced it.

Reads the cached runs (:class:`pipeline.study.cache.RunCache`), computes the intervals
(:mod:`pipeline.evaluation.stats`) and writes ``results.json``, ``report.md`` and ``arms.png`` (each arm's difference
from the baseline with its interval).
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluation.report import markdown_table, pyplot, save_figure
from pipeline.evaluation.stats import (
    NO_DIFFERENCE_DB,
    auc,
    balanced_accuracy,
    bonferroni_level,
    bootstrap,
    paired_difference,
    verdict,
)
from pipeline.study.arms import METRICS
from pipeline.study.cache import RunCache
from pipeline.study.plan import ARMS, LONGER_ARMS, StudySettings
from pipeline.utils.files import atomic_path

__all__ = ["arms_results", "transfer_results", "write_report"]

#: The margin under which a difference of each metric counts as none (PSNR in dB; SSIM in its own units).
_MARGINS = {"psnr_brain": NO_DIFFERENCE_DB, "psnr_volume": NO_DIFFERENCE_DB, "ssim_brain": 0.001, "ssim_volume": 0.001}


def _runs(cache: RunCache, part: str, arm: str, seeds: int) -> list[dict[str, Any]] | None:
    runs = [cache.get(part, f"{arm}/seed{seed}") for seed in range(seeds)]
    return None if any(r is None for r in runs) else runs  # type: ignore[return-value]


def _table(runs: Sequence[Mapping[str, Any]], metric: str, subjects: Sequence[str] | None = None) -> np.ndarray:
    """``(seeds, volumes)`` values of ``metric``, optionally only the volumes of ``subjects``."""
    return np.array([[v[metric] for v in r["volumes"] if subjects is None or v["subject"] in subjects] for r in runs])


def arms_results(cache: RunCache, settings: StudySettings, part: str = "arms", n_resamples: int = 2000) -> list[dict]:
    """Per arm: mean metrics, differences from the baseline with Bonferroni-corrected intervals, verdicts, speed."""
    arms = [a for a in ARMS if part == "arms" or a.name in LONGER_ARMS]
    base = _runs(cache, part, "baseline", settings.seeds)
    if base is None:
        return []
    level = bonferroni_level(len(arms) - 1)
    generated = {v["subject"] for v in base[0]["volumes"] if v["subject"].startswith("generated")}
    rows = []
    for arm in arms:
        runs = _runs(cache, part, arm.name, settings.seeds)
        if runs is None:
            continue
        row: dict[str, Any] = {
            "arm": arm.name,
            "question": arm.question,
            "steps": runs[0]["steps"],
            # medians over the seeds: a run slowed by another job on a shared machine does not move them
            "seconds_per_step": float(np.median([r["seconds_per_step"] for r in runs])),
            "cpu_seconds": float(np.median([r["cpu_seconds"] for r in runs])),
            "precision": runs[0].get("precision"),
        }
        for metric in METRICS:
            row[metric] = float(_table(runs, metric).mean())
            if arm.name != "baseline":
                est, low, high = paired_difference(_table(runs, metric), _table(base, metric), level, n_resamples)
                row[f"diff_{metric}"] = [est, low, high]
                row[f"verdict_{metric}"] = verdict(est, low, high, _MARGINS[metric])
        if arm.name != "baseline":
            for name in ("generated", "cohort"):
                keep = generated if name == "generated" else {v["subject"] for v in base[0]["volumes"]} - generated
                if keep:
                    est, low, high = paired_difference(
                        _table(runs, "psnr_brain", sorted(keep)), _table(base, "psnr_brain", sorted(keep)), level
                    )
                    row[f"diff_psnr_brain_{name}"] = [est, low, high]
        rows.append(row)
    return rows


def _auc_table(runs: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([r["prob"] for r in runs]), np.array(runs[0]["labels"])


def _auc_stat(prob: np.ndarray, labels: np.ndarray) -> Any:
    return lambda r, c: float(np.mean([auc(prob[s, c], labels[c]) for s in r]))


def _bacc_stat(prob: np.ndarray, labels: np.ndarray) -> Any:
    return lambda r, c: float(np.mean([balanced_accuracy(prob[s, c] >= 0.5, labels[c]) for s in r]))


def transfer_results(
    cache: RunCache, settings: StudySettings, kinds: Sequence[str], n_resamples: int = 2000
) -> dict[str, Any]:
    """AUC (primary) and balanced accuracy of every encoder x evaluation x set size, and denoiser - random."""
    rows, contrasts = [], []
    level = bonferroni_level(4)
    for size in ("small", "large"):
        floor = cache.get("transfer", f"floor/{size}")
        if floor is not None:
            prob, labels = np.array([floor["prob"]]), np.array(floor["labels"])
            rows.append(_transfer_row("logistic floor", "voxels", size, prob, labels, n_resamples, 0.95))
        for evaluation in ("probe", "finetune"):
            found = {}
            for kind in kinds:
                runs = [cache.get("transfer", f"{evaluation}/{kind}/{size}/seed{s}") for s in range(settings.seeds)]
                if any(r is None for r in runs):
                    continue
                found[kind] = _auc_table(runs)
                row = _transfer_row(kind, evaluation, size, *found[kind], n_resamples, 0.95)
                row["seconds"] = float(np.mean([r["seconds"] for r in runs]))
                rows.append(row)
            if "denoiser" in found and "random" in found:
                diff = _auc_difference(found["denoiser"], found["random"], level, n_resamples)
                answer = {"better": "helps", "worse": "hurts"}.get(verdict(*diff), "no evidence either way")
                contrasts.append({"evaluation": evaluation, "size": size, "diff_auc": list(diff), "answer": answer})
    return {"rows": rows, "contrasts": contrasts, "level": level}


def _auc_difference(
    pretrained: tuple[np.ndarray, np.ndarray], random: tuple[np.ndarray, np.ndarray], level: float, n_resamples: int
) -> tuple[float, float, float]:
    """AUC of ``pretrained`` minus AUC of ``random``, paired by seed and test subject, with its interval."""
    (prob_a, labels), (prob_b, _) = pretrained, random
    stat_a, stat_b = _auc_stat(prob_a, labels), _auc_stat(prob_b, labels)
    return bootstrap(lambda r, c: stat_a(r, c) - stat_b(r, c), *prob_a.shape, level, n_resamples)


def _transfer_row(
    encoder: str, evaluation: str, size: str, prob: np.ndarray, labels: np.ndarray, n_resamples: int, level: float
) -> dict[str, Any]:
    n_seeds, n_items = prob.shape
    return {
        "encoder": encoder,
        "evaluation": evaluation,
        "size": size,
        "auc": list(bootstrap(_auc_stat(prob, labels), n_seeds, n_items, level, n_resamples)),
        "balanced_accuracy": list(bootstrap(_bacc_stat(prob, labels), n_seeds, n_items, level, n_resamples)),
    }


def _interval(values: Sequence[float], digits: int = 2) -> str:
    est, low, high = values
    return f"{est:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def _plain_interval(values: Sequence[float], digits: int = 2) -> str:
    est, low, high = values
    return f"{est:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _arms_markdown(rows: Sequence[Mapping[str, Any]], level: float) -> list[str]:
    table = []
    for row in rows:
        if row["arm"] == "baseline":
            table.append(
                ["baseline", row["psnr_brain"], "-", "-", "-", "-", "-", row["seconds_per_step"], row["cpu_seconds"]]
            )
            continue
        table.append(
            [
                row["arm"],
                row["psnr_brain"],
                _interval(row["diff_psnr_brain"]),
                row["verdict_psnr_brain"],
                _interval(row["diff_psnr_volume"]),
                _interval(row["diff_ssim_brain"], 3),
                _interval(row.get("diff_psnr_brain_generated", [np.nan] * 3)),
                row["seconds_per_step"],
                row["cpu_seconds"],
            ]
        )
    headers = [
        "arm",
        "PSNR brain (dB)",
        "Δ PSNR brain",
        "verdict",
        "Δ PSNR volume",
        "Δ SSIM brain",
        "Δ PSNR brain, generated heads",
        "s/step",
        "CPU s per run",
    ]
    return [
        f"Differences from the baseline with {level:.1%} intervals (Bonferroni over {len(rows) - 1} contrasts; paired "
        "bootstrap over seeds and volumes). Verdict on PSNR in the brain: *no difference* when the estimate is within "
        f"±{NO_DIFFERENCE_DB} dB, *better*/*worse* when the interval excludes 0, else *inconclusive*. Every arm "
        f"trained {rows[0]['steps']} steps; s/step (wall) and CPU seconds (training, all threads) are medians over "
        "the seeds.",
        "",
        markdown_table(headers, table, digits=[2, 2, 2, 2, 2, 2, 2, 3, 0]),
    ]


def _answers(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = []
    for question in dict.fromkeys(r["question"] for r in rows if r["arm"] != "baseline"):
        parts = [
            f"`{r['arm']}` {r['verdict_psnr_brain']} ({_interval(r['diff_psnr_brain'])} dB)"
            for r in rows
            if r["question"] == question
        ]
        lines.append(f"- **{question}**: " + "; ".join(parts) + ".")
    return lines


def _ranking(short: Sequence[Mapping[str, Any]], longer: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    names = [r["arm"] for r in longer]
    order_short = sorted(names, key=lambda a: -next(r["psnr_brain"] for r in short if r["arm"] == a))
    order_long = sorted(names, key=lambda a: -next(r["psnr_brain"] for r in longer if r["arm"] == a))
    return {"short": order_short, "long": order_long, "holds": order_short == order_long}


def _figure(rows: Sequence[Mapping[str, Any]], path: Path, level: float) -> Path | None:
    others = [r for r in rows if r["arm"] != "baseline"]
    if not others:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(others) + 1.2))
    for k, row in enumerate(others):
        est, low, high = row["diff_psnr_brain"]
        ax.errorbar(est, k, xerr=[[est - low], [high - est]], fmt="o", color="k", capsize=3)
    ax.axvline(0.0, color="grey", lw=1)
    ax.axvspan(-NO_DIFFERENCE_DB, NO_DIFFERENCE_DB, color="grey", alpha=0.2)
    ax.set_yticks(range(len(others)), [r["arm"] for r in others])
    ax.invert_yaxis()
    ax.set_xlabel(f"PSNR in the brain, arm - baseline (dB), {level:.1%} interval")
    return save_figure(fig, path)


def _transfer_markdown(transfer: Mapping[str, Any], kinds: Sequence[str], pretrained: str | None) -> list[str]:
    table = [
        [r["encoder"], r["evaluation"], r["size"], _plain_interval(r["auc"]), _plain_interval(r["balanced_accuracy"])]
        for r in transfer["rows"]
    ]
    lines = [
        markdown_table(["encoder", "evaluation", "labelled set", "AUC", "balanced accuracy"], table, align="lllrr"),
        "",
        f"Denoiser-pretrained minus random encoder, AUC, {transfer['level']:.1%} intervals (Bonferroni over 4 "
        "contrasts; bootstrap over seeds and test subjects). Rule stated before the run: pretraining *helps* when "
        "the interval lies above 0, *hurts* when it lies below 0.",
        "",
        markdown_table(
            ["evaluation", "labelled set", "Δ AUC", "answer"],
            [[c["evaluation"], c["size"], _interval(c["diff_auc"], 3), c["answer"]] for c in transfer["contrasts"]],
            align="llrl",
        ),
    ]
    if not pretrained:
        lines += ["", "Pretrained weights (3D-ResNets / MedicalNet): skipped, no file given (`--pretrained PATH`)."]
    return lines


def write_report(
    out: Path,
    cache: RunCache,
    settings: StudySettings,
    recipe: Mapping[str, Any],
    parts: Sequence[str],
    pretrained: str | None,
    command: str,
    minutes: float,
) -> dict[str, Any]:
    """Compute every interval from the cached runs and write ``results.json``, ``report.md`` and the figures.

    Returns:
        The results, with ``"report"``: the path of ``report.md``.
    """
    level = bonferroni_level(len(ARMS) - 1)
    arms = arms_results(cache, settings, "arms", settings.bootstrap) if "arms" in parts else []
    longer = arms_results(cache, settings, "longer", settings.bootstrap) if "longer" in parts else []
    kinds = ["random", "denoiser"] + (["pretrained"] if pretrained else [])
    transfer = transfer_results(cache, settings, kinds, settings.bootstrap) if "transfer" in parts else {}
    results = {
        "command": command,
        "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version()},
        "minutes": minutes,
        "settings": settings.as_dict(),
        "recipe": recipe,
        "arms": arms,
        "longer": longer,
        "ranking": _ranking(arms, longer) if arms and longer else None,
        "transfer": transfer,
    }
    lines = [
        "# Study: the notes' questions and the transfer hypothesis",
        "",
        f"Command: `{command}` ({minutes:.1f} min this call; cached runs are not re-run). Settings: "
        f"{settings.seeds} seeds, {settings.spacing:g} mm volumes, {settings.steps} steps of "
        f"{settings.patches_per_step} x {settings.patch}³ patches per arm, Gaussian noise σ "
        f"{settings.noise_level:g}/255.",
        "",
    ]
    if arms:
        figure = _figure(arms, out / "arms.png", level)
        lines += ["## (a) The notes' questions", "", *_answers(arms), "", *_arms_markdown(arms, level), ""]
        lines += [f"![differences]({figure.name})", ""] if figure else []
    if longer and results["ranking"]:
        ranking = results["ranking"]
        lines += [
            f"## Does the ranking hold at {settings.longer_factor}x the budget?",
            "",
            f"Best to worst PSNR in the brain at {settings.steps} steps: {', '.join(ranking['short'])}; at "
            f"{settings.steps * settings.longer_factor} steps: {', '.join(ranking['long'])}. "
            + ("The ranking holds." if ranking["holds"] else "The ranking changes."),
            "",
            *_arms_markdown(longer, bonferroni_level(len(longer) - 1)),
            "",
        ]
    if transfer:
        lines += ["## (b) Does denoising pretraining help the classifier?", ""]
        lines += _transfer_markdown(transfer, kinds, pretrained) + [""]
    report = out / "report.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return {**results, "report": str(report)}
